"""The fast lane calls the hot handlers directly and maps their errors like the app does."""

from __future__ import annotations

import asyncio

import httpx
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.core.errors import Overloaded
from service.http.middleware.fastlane import FastLane


async def fallback(scope: Scope, receive: Receive, send: Send) -> None:
    await Response(b"fallback", status_code=299)(scope, receive, send)


async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/octet-stream", headers={"X-Echo": "1"})


async def overloaded(_: Request) -> Response:
    raise Overloaded("queue full", retry_after_s=3)


async def broken(_: Request) -> Response:
    raise RuntimeError("bug")


def call(method: str, path: str, body: bytes = b"") -> httpx.Response:
    lane = FastLane(fallback, handlers={"/echo": echo, "/overloaded": overloaded, "/broken": broken})

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=lane), base_url="http://lane") as client:
            return await client.request(method, path, content=body)

    return asyncio.run(go())


def test_posts_to_hot_paths_reach_the_handler_with_their_body_and_headers() -> None:
    response = call("POST", "/echo", b"payload")
    assert (response.status_code, response.content, response.headers["x-echo"]) == (200, b"payload", "1")


def test_other_methods_and_paths_go_on_to_the_app() -> None:
    assert call("GET", "/echo").status_code == 299
    assert call("POST", "/elsewhere").status_code == 299


def test_service_errors_become_json_with_their_status_and_headers() -> None:
    response = call("POST", "/overloaded")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert orjson.loads(response.content) == {"error": "queue full", "error_type": "overloaded"}


def test_unexpected_errors_become_a_json_500_not_a_crash() -> None:
    response = call("POST", "/broken")
    assert response.status_code == 500
    assert orjson.loads(response.content)["error_type"] == "internal_error"
