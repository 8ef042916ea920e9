"""/docs and /redoc work offline: every URL their pages load is this server's, and answers; in headless Chromium
with every other host unresolvable, both pages render the API and nothing is fetched from elsewhere."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.jobs.helpers import eventually
from tests.service.api_process import api_process

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
HOST = "ftjobs.test"  # not 127.0.0.1: Swagger UI and ReDoc treat a local host specially


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


def test_the_pages_carry_a_policy_of_this_server_only(http) -> None:  # type: ignore[no-untyped-def]
    for page in ("/docs", "/redoc"):
        csp = http.get(page).headers["content-security-policy"]
        assert "default-src 'self'" in csp and "img-src 'self' data: blob:" in csp, csp
        assert "https:" not in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]


@pytest.fixture
def offline_browser() -> Iterator[Any]:
    """Headless Chromium where HOST is this machine and every other host name fails to resolve (no internet)."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no chromium/chromedriver binary (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900",
                f"--host-resolver-rules=MAP {HOST} 127.0.0.1, MAP * ~NOTFOUND"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_docs_pages_render_offline_in_chromium(  # type: ignore[no-untyped-def]
    env: dict[str, str], offline_browser, tmp_path: Path
) -> None:
    driver = offline_browser
    with api_process(env, tmp_path / "api.log") as api:
        origin = api.url.replace("127.0.0.1", HOST)
        for page, title in (("/docs", ".swagger-ui .info .title"), ("/redoc", ".api-info h1")):
            driver.get(origin + page)
            script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''"
            assert eventually(lambda: "ftjobs" in driver.execute_script(script, title), 60), page  # noqa: B023
            # ReDoc's side menu and search come a moment after its title: give late requests time to be made.
            assert eventually(lambda: driver.execute_script("return document.readyState") == "complete", 30)
            driver.execute_script("return new Promise((done) => setTimeout(done, 1500))")
            urls, refused = {}, set()  # request id -> URL; ids the policy refused before any connection
            for entry in driver.get_log("performance"):
                event = json.loads(entry["message"])["message"]
                if event["method"] == "Network.requestWillBeSent":
                    urls[event["params"]["requestId"]] = event["params"]["request"]["url"]
                elif event["method"] == "Network.loadingFailed" and event["params"].get("blockedReason") == "csp":
                    refused.add(event["params"]["requestId"])
            fetched = {url for rid, url in urls.items() if rid not in refused}
            assert f"{origin}/openapi.json" in fetched, fetched
            assert all(u.startswith((origin + "/", "data:", "blob:" + origin)) for u in fetched), fetched
            # A refused load from elsewhere (the policy at work: ReDoc's logo on cdn.redoc.ly) never left; a failed
            # one tried to; any other refusal (an inline script, eval) would be a page the policy broke.
            problems = [
                e["message"] for e in driver.get_log("browser")
                if e["level"] == "SEVERE" and not re.search(r"Loading the \w+ 'https://[^']+' violates", e["message"])
            ]  # fmt: skip
            assert not problems, (page, problems)
