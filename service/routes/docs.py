"""/docs (Swagger UI) and /redoc served with their assets from this machine, never from a CDN: they work offline.

The JavaScript and CSS come from the `fastapi-offline` wheel (MIT; it ships Swagger UI's and ReDoc's
distribution files), found on disk without importing it. FastAPI's own `/docs` and `/redoc` are turned off in
`create_app` (`docs_url=None, redoc_url=None`). Both pages carry a Content-Security-Policy that lets them load only
from this server: ReDoc's side menu names a logo on cdn.redoc.ly, which the browser then never asks for (its
`<img>` hides itself when refused), and the page's one inline script is allowed by its hash, not by
'unsafe-inline'.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from ftjobs.service.errors import NotFound

router = APIRouter(include_in_schema=False)

ASSETS_URL = "/docs/assets"
ASSETS = {  # served name -> media type
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
# Same origin only. Styles: Swagger UI and ReDoc (styled-components) write inline styles; workers: ReDoc's search
# runs in a blob: worker; images: ReDoc's icons are data: URLs.
CSP = (
    "default-src 'self'; script-src 'self'{hashes}; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def with_csp(page: HTMLResponse) -> HTMLResponse:
    """`page` with a Content-Security-Policy of this server only, its inline scripts allowed by their sha256."""
    body = bytes(page.body).decode()
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in INLINE_SCRIPT.findall(body)
    )
    page.headers["Content-Security-Policy"] = CSP.format(hashes=hashes)
    page.headers["X-Content-Type-Options"] = "nosniff"
    return page


def assets_dir() -> Path | None:
    """The folder of the installed `fastapi_offline` package's static files (None when it is not installed)."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    return folder if folder.is_dir() else None


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    """Swagger UI over /openapi.json, its assets from /docs/assets."""
    page = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="ftjobs API - Swagger UI",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
    )
    return with_csp(page)


@router.get("/redoc")
def redoc() -> HTMLResponse:
    """ReDoc over /openapi.json, its script from /docs/assets and no web fonts."""
    page = get_redoc_html(
        openapi_url="/openapi.json",
        title="ftjobs API - ReDoc",
        redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    )
    return with_csp(page)


@router.get(ASSETS_URL + "/{name:path}")  # any name reaches the check below (a 404, never a 405)
def docs_asset(name: str) -> FileResponse:
    """One of the documentation pages' files; cached for a day (they change only with the package)."""
    folder = assets_dir()
    if name not in ASSETS or folder is None or not (folder / name).is_file():
        raise NotFound(f"no documentation asset {name!r}", param="name")
    return FileResponse(folder / name, media_type=ASSETS[name], headers={"Cache-Control": "public, max-age=86400"})
