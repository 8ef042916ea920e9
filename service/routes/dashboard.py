"""The read-only web dashboard: `/dashboard`, an HTML page and its scripts and styles, shipped in the package.

The shell holds no data and is served without a key; everything it shows comes from the /v1 JSON API, called
by the browser with the key the user types (kept in sessionStorage, sent as `Authorization: Bearer`). Nothing is
loaded from another origin (no CDN, no web fonts), so it works offline; the Content-Security-Policy says so.
Each asset is a fixed route (no path parameter): the set of files served is exactly ASSETS.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

router = APIRouter(tags=["dashboard"], include_in_schema=False)  # a web page, not part of the API's contract

PAGE = "index.html"
# Served as /dashboard/<name>: the page's scripts (ES modules) and styles, from service/static/dashboard/.
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "views.js": "text/javascript; charset=utf-8",
    "chart.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# Same origin only: scripts, styles, fetch() to the API. Downloads go through blob: URLs (a navigation, not a
# fetch); canvas drawing needs nothing. No inline script or style anywhere in the page.
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: a new release's page and scripts arrive together
}


@cache
def asset_bytes(name: str) -> bytes:
    """A file of service/static/dashboard/, read from the installed package (a wheel or a checkout) once."""
    return resources.files("ftjobs.service").joinpath("static", "dashboard", name).read_bytes()


@router.get("/dashboard")
def dashboard() -> Response:
    """The dashboard page (its data comes from /v1, with the key the user gives it)."""
    return Response(asset_bytes(PAGE), media_type="text/html; charset=utf-8", headers=HEADERS)


def asset_route(name: str, media_type: str) -> None:
    """Register GET /dashboard/<name>."""

    def serve() -> Response:
        return Response(asset_bytes(name), media_type=media_type, headers=HEADERS)

    serve.__name__ = serve.__qualname__ = "dashboard_" + name.replace(".", "_")
    router.add_api_route(f"/dashboard/{name}", serve, methods=["GET"])


for _name, _media_type in ASSETS.items():
    asset_route(_name, _media_type)
