"""The web page driven in headless Chromium (Selenium, Debian chromium + chromedriver) against a real server.

A real `videokv serve` subprocess (tiny model, bearer token) serves the page; the browser opens it with
`?token=`, creates a session, uploads a real clip with a subtitle file, asks a question and watches the
answer stream in token by token, then checks the evidence spans highlighted on the timeline and the
thumbnail shown for one of them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from videokv.video.decode import find_sample_clip

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() or not CHROMEDRIVER.exists(),
    reason="needs Debian's chromium and chromedriver (/usr/bin/chromium, /usr/bin/chromedriver): "
    "apt-get install chromium chromium-driver",
)

WAIT_S = 240  # ingest and answers run on a shared 2-core machine

SRT = """1
00:00:00,500 --> 00:00:03,000
A cyclist rides down the street.

2
00:00:04,000 --> 00:00:07,500
Two more bikes pass a parked red car.

3
00:00:08,000 --> 00:00:09,800
The riders turn the corner.
"""

# Records the length of every text the answer element is given, one entry per DOM change (the page
# appends each streamed piece), so the test can tell a streamed answer from one set all at once.
RECORD_ANSWER = """
window.__answerLengths = [];
const answer = document.getElementById('answer');
new MutationObserver((records) => {
  for (const r of records) {
    if (r.type === 'characterData') window.__answerLengths.push(r.target.data.length);
    for (const n of r.addedNodes) window.__answerLengths.push(n.textContent.length);
  }
}).observe(answer, {childList: true, characterData: true, subtree: true});
"""

IMAGE_LOADED = """
const img = document.getElementById('thumbnail');
return img && img.complete && img.getAttribute('src') ? img.naturalWidth : 0;
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator:
    """Headless Chromium through chromedriver, both given explicitly (Selenium Manager never downloads)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, condition, timeout: float = WAIT_S, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, message)


def _text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def _error_text(driver) -> str:
    box = driver.find_element("id", "error")
    return box.text if box.is_displayed() else ""


def _open_page(driver, server, token: str | None) -> None:
    driver.get(f"{server.url}/" + (f"?token={token}" if token is not None else ""))
    _wait(driver, lambda d: d.execute_script("return document.readyState") == "complete", 60)


def _create_session(driver, name: str) -> str:
    """Create a session from the page (rekv preset, 1 fps); return its id from the sessions list."""
    from selenium.webdriver.support.ui import Select

    _wait(
        driver,
        lambda d: len(d.find_elements("css selector", "#preset option")) > 0,
        60,
        "the preset picker never filled from /v1/presets",
    )
    Select(driver.find_element("id", "preset")).select_by_value("rekv")
    fps = driver.find_element("id", "fps")
    fps.clear()
    fps.send_keys("1")
    driver.find_element("id", "session-name").send_keys(name)
    driver.find_element("id", "session-create").click()
    _wait(
        driver,
        lambda d: d.find_element("id", "session-panel").is_displayed() or _error_text(d),
        60,
        "the session panel never opened",
    )
    assert not _error_text(driver), _error_text(driver)
    current = _wait(
        driver,
        lambda d: d.find_elements("css selector", "#sessions li.current"),
        30,
        "the new session is not marked in the sessions list",
    )
    return current[0].get_attribute("data-id")


def test_page_session_upload_ask_evidence(server, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    clip = find_sample_clip("bikes.mp4")
    srt = tmp_path / "bikes.srt"
    srt.write_text(SRT)

    _open_page(browser, server, server.token)
    # the token was taken from the URL (and kept in localStorage), then removed from the address bar
    assert "token=" not in browser.current_url
    assert browser.execute_script("return localStorage.getItem('videokv.token')") == server.token
    _wait(browser, lambda d: _text(d, "health").startswith("model "), 60, "health never loaded")

    sid = _create_session(browser, "web-test")
    with server.client() as api:
        status = api.get(f"/v1/sessions/{sid}").raise_for_status().json()
    assert status["name"] == "web-test" and status["memory"] == "rekv" and status["frames"] == 0

    # upload the clip and its subtitles; the page reports the blocks the server added
    browser.find_element("id", "upload-file").send_keys(str(clip))
    browser.find_element("id", "upload-subtitles").send_keys(str(srt))
    browser.find_element("id", "upload").click()
    _wait(
        browser,
        lambda d: _text(d, "upload-result").startswith("added") or _error_text(d),
        message="the upload never finished",
    )
    assert not _error_text(browser), _error_text(browser)
    with server.client() as api:
        status = api.get(f"/v1/sessions/{sid}").raise_for_status().json()
        timeline = api.get(f"/v1/sessions/{sid}/timeline").raise_for_status().json()
    assert status["frames"] > 0 and status["blocks"] > 0 and status["clock"] > 0
    # the status panel (polled every second) shows what the server reports
    _wait(browser, lambda d: _text(d, "st-frames") == str(status["frames"]), 30, "status never updated")
    assert _text(browser, "st-blocks") == str(status["blocks"])
    # memory: one definition (issue 35, item 4): resident = ingest context + resident blocks, as `ask` says
    kv = status["kv"]
    assert kv["resident_bytes"] == kv["context_bytes"] + sum(kv["blocks_bytes"].values()) > 0

    def mib(n: int) -> str:  # the page's own format
        return f"{n / 2**20:.{2 if n < 10 * 2**20 else 1}f} MiB"

    assert _text(browser, "st-resident") == mib(kv["resident_bytes"])
    assert _text(browser, "st-offloaded") == mib(kv["offloaded_bytes"])
    # the timeline draws the memory's spans, text spans (the subtitles) among them
    spans = browser.find_elements("css selector", "#timeline .span")
    assert len(spans) == len(timeline["spans"]) > 0
    assert {s.get_attribute("data-kind") for s in spans} == {s["kind"] for s in timeline["spans"]}

    # ask; the answer streams in piece by piece
    browser.execute_script(RECORD_ANSWER)
    browser.find_element("id", "question").send_keys("What do the cyclists pass?")
    max_tokens = browser.find_element("id", "max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("24")
    browser.find_element("id", "ask").click()
    _wait(
        browser,
        lambda d: "tokens" in _text(d, "answer-meta") or _error_text(d),
        message="the answer never arrived",
    )
    assert not _error_text(browser), _error_text(browser)
    answer = _text(browser, "answer")
    assert answer.strip()
    lengths = browser.execute_script("return window.__answerLengths")
    grown = sorted({n for n in lengths if n > 0})
    assert len(grown) > 1, f"the answer was not streamed token by token: text lengths {lengths}"
    assert browser.find_element("id", "answer").get_attribute("aria-busy") == "false"

    # the evidence spans are highlighted on the timeline, inside 0..clock
    evidence = _wait(
        browser,
        lambda d: d.find_elements("css selector", "#timeline .evidence"),
        30,
        "no evidence span was highlighted",
    )
    clock = float(browser.find_element("id", "timeline").get_attribute("data-clock"))
    assert clock == pytest.approx(status["clock"], abs=1e-3)
    for node in evidence:
        t0, t1 = float(node.get_attribute("data-t0")), float(node.get_attribute("data-t1"))
        assert 0.0 <= t0 <= t1 <= clock + 1e-3, (t0, t1, clock)
        assert node.is_displayed()
    assert len(browser.find_elements("css selector", "#evidence-list li")) == len(evidence)

    # hovering an evidence span shows a thumbnail of its frames; clicking another switches to it
    ActionChains(browser).move_to_element(evidence[0]).perform()
    _wait(browser, lambda d: d.execute_script(IMAGE_LOADED) > 0, 60, "no thumbnail loaded on hover")
    assert browser.find_element("id", "thumb-box").is_displayed()
    assert "evidence" in _text(browser, "thumb-caption")
    browser.execute_script("arguments[0].click()", evidence[-1])  # spans may overlap: click this one
    _wait(browser, lambda d: "active" in evidence[-1].get_attribute("class"), 10)
    _wait(browser, lambda d: d.execute_script(IMAGE_LOADED) > 0, 60, "no thumbnail loaded on click")
    assert not _error_text(browser), _error_text(browser)


def test_page_reports_server_errors(server, browser, tmp_path: Path) -> None:
    """A wrong token and a non-video upload: the page shows the server's `detail`, and nothing changes."""
    _open_page(browser, server, "not-the-token")
    _wait(browser, lambda d: "token needed" in _text(d, "health"), 60, "a wrong token was not reported")
    # the right token typed into the field is used from then on
    field = browser.find_element("id", "token")
    field.clear()
    field.send_keys(server.token)
    browser.find_element("id", "token-save").click()
    _wait(browser, lambda d: _text(d, "health").startswith("model "), 60, "the typed token was not used")

    sid = _create_session(browser, "errors")
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("this is not a video, only text\n" * 50)
    browser.find_element("id", "upload-file").send_keys(str(bogus))
    browser.find_element("id", "upload").click()
    message = _wait(browser, lambda d: _error_text(d), 120, "the failed upload was not reported")
    prefix = "upload of notes.mp4 failed: "
    assert message.startswith(prefix)
    # the page shows the server's `detail` (not a bare status code)
    assert len(message) > len(prefix) + 10 and "answered HTTP" not in message, message
    with server.client() as api:
        r = api.post(f"/v1/sessions/{sid}/video", files={"file": ("notes.mp4", bogus.read_bytes())})
        status = api.get(f"/v1/sessions/{sid}").raise_for_status().json()
    assert r.status_code == 415, r.text
    # the same kind of message: the detail's first words (before any temp path) are on the page
    assert r.json()["detail"].split("/")[0].split("'")[0][:30] in message
    assert status["frames"] == 0 and status["blocks"] == 0
    assert not browser.find_element("id", "upload").get_attribute("disabled")


def test_page_live_source(server, browser, tmp_path: Path) -> None:
    """Start a live source from the page (a file path on the server, under its --media-dir, at stream
    pace), watch the stream clock advance in the status panel, stop it."""
    import shutil

    clip = tmp_path / "bikes.mp4"  # the test server's media folder holds the tests' temp folders
    shutil.copy(find_sample_clip("bikes.mp4"), clip)
    _open_page(browser, server, server.token)
    sid = _create_session(browser, "live")
    url = browser.find_element("id", "source-url")
    url.send_keys(str(clip))
    browser.find_element("id", "source-start").click()
    _wait(
        browser,
        lambda d: _text(d, "st-source").startswith("running") or _error_text(d),
        60,
        "the live source never showed as running",
    )
    assert not _error_text(browser), _error_text(browser)
    _wait(browser, lambda d: int(_text(d, "st-frames")) > 0, 120, "the live source ingested nothing")
    browser.find_element("id", "source-stop").click()
    _wait(
        browser,
        lambda d: _text(d, "st-source").split(":")[0] in ("stopped", "done") or _error_text(d),
        120,
        "the live source did not stop",
    )
    assert not _error_text(browser), _error_text(browser)
    with server.client() as api:
        status = api.get(f"/v1/sessions/{sid}").raise_for_status().json()
    assert status["source"]["state"] in ("stopped", "done") and status["frames"] > 0
    # the timeline follows the stream
    _wait(
        browser,
        lambda d: float(d.find_element("id", "timeline").get_attribute("data-clock")) > 0,
        30,
        "the timeline never showed the live stream",
    )


def test_static_assets_need_no_token(server) -> None:
    """The page and its assets load without the token (the page asks for it); the API does not."""
    page = httpx.get(f"{server.url}/", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text
        r = httpx.get(server.url + asset, timeout=30)
        assert r.status_code == 200 and len(r.content) > 100
    assert httpx.get(f"{server.url}/v1/sessions", timeout=30).status_code == 401
