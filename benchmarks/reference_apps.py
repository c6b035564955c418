"""Reference servers for the load benchmark, run on the same uvicorn with one worker.

R1: a FastAPI endpoint written the common way (a pydantic request model, returns a constant).
R2: a bare ASGI callable that parses the same body with orjson and returns a constant: the ceiling
of the Python HTTP stack here.
"""

from __future__ import annotations

import orjson
from fastapi import FastAPI
from pydantic import BaseModel


class ScoreRequest(BaseModel):
    inputs: list[list[float]]


r1 = FastAPI()


@r1.post("/anomaly-score")
async def score(request: ScoreRequest) -> dict[str, float]:
    return {"score": 0.0}


CONSTANT = orjson.dumps({"score": 0.0})


async def r2(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    orjson.loads(body)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": CONSTANT})
