"""/docs and /redoc work offline: every URL their pages load is this server's, and answers."""

from __future__ import annotations

import re

import pytest


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_only_local_assets(http, page: str) -> None:  # type: ignore[no-untyped-def]
    response = http.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    urls = set(re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html))
    urls |= set(re.findall(r"""(?:url|spec-url)\s*:\s*["']([^"']+)["']""", html))
    urls |= set(re.findall(r"""spec-url\s*=\s*["']([^"']+)["']""", html))
    assert "/openapi.json" in urls
    assert not re.search(r"https?://", html), re.findall(r"https?://\S+", html)
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = http.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, url  # the real bundle, not an empty stub


def test_an_unknown_asset_is_a_404_error_body(http) -> None:  # type: ignore[no-untyped-def]
    response = http.get("/docs/assets/../../etc/passwd")
    assert response.status_code == 404
    response = http.get("/docs/assets/nope.js")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
