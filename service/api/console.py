"""The operator's console: one HTML page at `/` and its ES modules under `/console/`, served from memory.

Plain HTML, CSS and small ES modules (service/api/static/console/): no build step, nothing fetched
from elsewhere, so it works offline. It logs in through /api/v1/auth/login and follows
/api/v1/events for live updates.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Controller, Response, Router, get
from litestar.datastructures import CacheControlHeader

from service.api.static_files import packaged_files_router

__all__ = ["CONSOLE_DIR", "ConsoleController", "console_assets_router"]

CONSOLE_DIR = Path(__file__).resolve().parent / "static" / "console"

#: The page runs only its own scripts and styles and talks only to this origin.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:;"
    " form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


class ConsoleController(Controller):
    path = "/"
    include_in_schema = False

    def __init__(self, owner: Router) -> None:
        super().__init__(owner)
        self._index = (CONSOLE_DIR / "index.html").read_bytes()

    @get()
    async def index(self) -> Response[bytes]:
        return Response(
            self._index, media_type="text/html",
            headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"},
        )


def console_assets_router() -> Router:
    """/console/*: revalidated on every load (Last-Modified), so a new release is seen at once."""
    return packaged_files_router("/console", CONSOLE_DIR, cache_control=CacheControlHeader(no_cache=True))
