"""The operator console: one static page (HTML + inline JS and CSS, no external assets, so it
works in an air-gapped network) at `/`, calling the JSON API under /wacht/v1/."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

HEADERS = {
    # Everything is inline and same-origin; nothing may load from elsewhere.
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
    "Cache-Control": "no-cache",
}


def page() -> str:
    return (resources.files("wacht.service.http") / "static" / "console.html").read_text("utf-8")


async def _console(request: web.Request) -> web.Response:
    return web.Response(text=page(), content_type="text/html", charset="utf-8", headers=HEADERS)


def routes(app: web.Application) -> None:
    app.router.add_get("/", _console)
    app.router.add_get("/console", _console)
