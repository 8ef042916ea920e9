"""The web dashboard: its shell and headers in process, then in a real browser against a live stack.

The browser is Debian's headless Chromium driven by Selenium through Debian's chromedriver (`.ci/run` installs
both; nothing is downloaded). The stack is a uvicorn process with an API key, the test Redis and a real worker;
a tiny classification job runs while the page is open, so the page must follow it live (SSE or its poll) to
show the numbers asserted at the end. `FTJOBS_DASHBOARD_SCREENSHOT=docs/dashboard.png` refreshes the README's
screenshot (otherwise it goes to the test's temporary folder).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ftjobs.service.routes.dashboard import ASSETS
from tests.conftest import REPO
from tests.jobs.helpers import eventually
from tests.service.api_process import api_process
from tests.service.tenant_jobs import bearer, upload_as
from tests.tiny_models import build_tiny_bert

KEY = "sk-dashboard-0123456789abcdef"
STATIC = REPO / "service" / "static" / "dashboard"
CHROMIUM = next((p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))), None)
CHROMEDRIVER = shutil.which("chromedriver")
JOB_TIMEOUT_S = 900  # a tiny job takes seconds on idle cores; the suite shares them
SIZE = (1000, 700)  # the screenshot's, in CSS pixels


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "FTJOBS_API_KEYS": f"{KEY}:dash"}


def test_the_shell_is_served_without_a_key_and_the_data_is_not(http) -> None:  # type: ignore[no-untyped-def]
    page = http.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    for src in re.findall(r'(?:src|href)="(/[^"]*)"', page.text):  # every asset the page names is served
        asset = http.get(src)
        assert asset.status_code == 200, src
        assert asset.headers["content-security-policy"] == csp
    assert http.get("/v1/jobs").status_code == 401  # the page's data needs the key
    assert http.get("/dashboard/nothing.js").status_code == 404


def test_the_assets_load_nothing_from_elsewhere_and_insert_no_html() -> None:
    """No CDN, no web font, no inline script or style; API values are only ever text."""
    assert {p.name for p in STATIC.iterdir()} == {"index.html", *ASSETS}
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://", text), path.name
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", text), path.name
    html = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and "style=" not in html and "<style" not in html


def classification_rows(n: int, salt: str) -> list[dict[str, Any]]:
    words = {"cooking": ["bake the bread", "stir the soup", "chop onions"], "sports": ["kick the ball", "run fast"]}
    return [{"text": f"{ws[i % len(ws)]} {salt}{i}", "label": label} for i in range(n) for label, ws in words.items()]


def submit_job(http: httpx.Client, model: Path) -> str:
    train = upload_as(http, KEY, classification_rows(12, "t"))
    valid = upload_as(http, KEY, classification_rows(4, "v"), name="valid.jsonl")
    request = {
        "model": str(model),
        "task": "classification",
        "training_file": train,
        "validation_file": valid,
        "method": {"type": "lora", "r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        "hyperparameters": {"n_epochs": 2, "batch_size": 8, "eval_steps": 2, "max_seq_length": 32},
    }
    created = http.post("/v1/jobs", json=request, headers=bearer(KEY))
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium at SIZE, its console kept, downloads into tmp_path/downloads."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no chromium/chromedriver binary (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars",
                f"--window-size={SIZE[0]},{SIZE[1]}", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    downloads = tmp_path / "downloads"
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": SIZE[0], "height": SIZE[1], "deviceScaleFactor": 1, "mobile": False})  # fmt: skip
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def texts(driver: Any, css: str) -> list[str]:
    """The rendered text of each element matching `css`, read in one script (the page re-renders as it refreshes)."""
    script = "return [...document.querySelectorAll(arguments[0])].map((e) => e.innerText.trim())"
    return list(driver.execute_script(script, css))


def wait_text(driver: Any, css: str, predicate: Any = bool, timeout: float = 60) -> str:
    """The text of the first element matching `css` once `predicate(text)` holds (the page renders async)."""
    seen: list[str] = []

    def check() -> bool:
        seen[:] = texts(driver, css)[:1]
        return bool(seen) and bool(predicate(seen[0]))

    assert eventually(check, timeout), f"{css}: {seen}; console: {driver.get_log('browser')}"
    return seen[0]


def click(driver: Any, css: str) -> None:
    """Click the element now matching `css` (found and clicked in one script: the page re-renders as it refreshes)."""
    assert driver.execute_script("const e = document.querySelector(arguments[0]); e && e.click(); return !!e", css), css


def number(text: str) -> float:
    return float(text.replace("−", "-"))


def number_text(value: float, text: str) -> str:
    """The number in `text` that shows `value` (to the page's 4 significant digits); fails if none does."""
    numbers = re.findall(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", text)
    found = [t for t in numbers if number(t) == pytest.approx(value, rel=1e-3)]
    assert found, (value, text)
    return found[0]


def test_the_dashboard_follows_a_job_in_chromium(  # type: ignore[no-untyped-def]
    env, worker, browser, tmp_path: Path, model_root: Path
) -> None:
    bert = build_tiny_bert(model_root / "tiny-bert")
    with api_process(env, tmp_path / "api.log") as api, httpx.Client(base_url=api.url, timeout=60) as http:
        driver = browser
        driver.get(f"{api.url}/dashboard")
        # No key yet: the API's 401 is shown and the key is asked for.
        assert "401" in wait_text(driver, "#error")
        assert driver.find_element("id", "key-panel").is_displayed()
        driver.find_element("id", "key-input").send_keys(KEY)
        driver.find_element("css selector", "#key-form button[type=submit]").click()
        driver.get_log("browser")  # drained: the 401 above was expected
        # The jobs list, empty; it refreshes itself, and shows the job once submitted.
        assert wait_text(driver, "#jobs tbody") == "No jobs."
        job_id = submit_job(http, bert)
        row = f'#jobs tr[data-job="{job_id}"]'
        wait_text(driver, f"{row} .badge", timeout=30)
        assert driver.execute_script("return sessionStorage.getItem('ftjobs.apiKey')") == KEY
        assert driver.execute_script("return localStorage.length") == 0
        click(driver, f"{row} a")
        driver.execute_script("window.stillTheSamePage = true")
        # The job page follows the job to its end without a reload.
        status = wait_text(driver, '[data-field="status"]', lambda t: t in ("succeeded", "failed"), JOB_TIMEOUT_S)
        job = http.get(f"/v1/jobs/{job_id}", headers=bearer(KEY)).json()
        assert status == job["status"] == "succeeded", (job.get("error"), worker.output()[-3000:])
        assert driver.execute_script("return window.stillTheSamePage") is True
        results = job["results"]
        steps = results["steps"]
        assert wait_text(driver, '[data-field="steps"]') == str(steps)
        assert wait_text(driver, '[data-field="progress"]') == f"{steps}/{steps} (100%)"
        for metric in ("accuracy", "f1", "eval_loss"):  # the final evaluation, and the baseline beside it
            cells = f'#results tr[data-metric="{metric}"]'
            assert number(wait_text(driver, f"{cells} td.after")) == pytest.approx(results["final"][metric], rel=1e-3)
            (before,) = texts(driver, f"{cells} td.before")
            assert number(before) == pytest.approx(results["baseline"][metric], rel=1e-3)
        # The curve's last eval point, as text beside the canvas; the confusion matrices as tables.
        metrics = http.get(f"/v1/jobs/{job_id}/metrics", params={"limit": 1000}, headers=bearer(KEY)).json()["data"]
        evals = [m for m in metrics if m["split"] == "eval"]
        trains = [m for m in metrics if m["split"] == "train"]
        # e.g. "train loss 0.6952 at step 6 (6 points) · eval loss 0.6932 at step 6 (4 points)", once all are in
        shown = f"at step {evals[-1]['step']} ({len(evals)} points)"
        note = wait_text(driver, "#chart-summary", lambda t: t.endswith(shown))
        assert f"train loss {number_text(trains[-1]['values']['loss'], note)} at step {trains[-1]['step']}" in note
        (eval_loss,) = re.findall(r"eval loss (\S+) at step", note)
        assert number(eval_loss) == pytest.approx(evals[-1]["values"]["loss"], rel=1e-3)
        cm = results["confusion_matrix"]
        cells = texts(driver, '#confusion-section figure[data-stage="final"] td')
        assert [int(c) for c in cells] == [n for row_ in cm["final"] for n in row_]

        # Every event of the job is listed (streamed or polled), and every artifact.
        def all_events_listed() -> bool:
            page = http.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}, headers=bearer(KEY)).json()
            return len(texts(driver, "#events tbody tr")) == len(page["data"])

        assert eventually(all_events_listed, 30)
        script = "return [...document.querySelectorAll('#artifacts tbody tr')].map((r) => r.dataset.artifact)"
        shown = driver.execute_script(script)
        assert shown == [a["name"] for a in job["artifacts"]]
        assert texts(driver, "#live") != ["(polled)"]  # the event stream (fetch() with the key) did not fail
        save_screenshot(driver, tmp_path)
        # A download goes through the API with the key: the same bytes as listed.
        artifact = next(a for a in job["artifacts"] if a["name"] == "metrics.json")
        click(driver, '#artifacts tr[data-artifact="metrics.json"] button')
        saved = driver.downloads / "metrics.json"
        assert eventually(lambda: saved.is_file(), 30), list(driver.downloads.glob("*"))
        assert hashlib.sha256(saved.read_bytes()).hexdigest() == artifact["sha256"]
        # The list's status filter asks the API's status index.
        click(driver, 'main a[href="#/"]')
        wait_text(driver, f'{row} [data-status="succeeded"]')
        driver.get(f"{api.url}/dashboard#/?status=failed")
        assert wait_text(driver, "#jobs tbody") == "No jobs."
        driver.get(f"{api.url}/dashboard#/?status=succeeded")
        wait_text(driver, f"{row} .badge")
        problems = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not problems, problems  # no script error, no CSP violation


def test_without_keys_the_page_needs_none(env, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with api_process(env, tmp_path / "api.log", FTJOBS_API_KEYS="") as api:
        browser.get(f"{api.url}/dashboard#/?status=running")
        assert wait_text(browser, "#jobs tbody") == "No jobs."
        assert texts(browser, "#error") == [""] and not browser.find_element("id", "key-panel").is_displayed()
        assert texts(browser, "#key-state") == ["no key"]


def save_screenshot(driver: Any, tmp_path: Path) -> None:
    """The job page as a PNG of SIZE; into the docs when FTJOBS_DASHBOARD_SCREENSHOT names the file."""
    driver.execute_script("window.scrollTo(0, 0)")
    target = Path(os.environ.get("FTJOBS_DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
    png = driver.get_screenshot_as_png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == SIZE
    target.write_bytes(png)
