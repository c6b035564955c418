"""The web page at `/`: static files only; the page itself talks to the public API like any client."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"  # service/http/static
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
# Revalidate on every load (cheap: ETag), so a redeployed service never pairs old JS with a new API.
HEADERS = {"Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


def static_files() -> dict[str, Path]:
    """The files the page may load, by name; anything else is a 404 (no path is ever joined)."""
    return {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in MEDIA_TYPES}


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type=MEDIA_TYPES[".html"], headers=HEADERS)


@router.get("/static/{name}")
async def static(name: str) -> FileResponse:
    path = static_files().get(name)
    if path is None:
        raise HTTPException(404, f"no static file named {name!r}")  # app.py answers {error, error_type}
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)
