"""The web page driven in headless Chromium (Selenium, Debian chromium + chromedriver) against a real server.

A real `videokv serve` subprocess (tiny model, bearer token) serves the page; the browser opens it with
`?token=`, creates a session, uploads a real clip with a subtitle file, asks a question and watches the
answer stream in token by token, then checks the evidence spans highlighted on the timeline, the
thumbnail shown for a frame span and the subtitle line shown for a text span. Issue 35, item 7 (what a new
user trips on) has one test or assertion per point: the header's session count is the list's, the list
keeps up with the status panel, each session keeps its own question, text evidence shows its line, the
preset description is one short sentence, and no control character reaches the page.
"""

from __future__ import annotations

import json
import re
import shutil
import time
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
CUES = {
    0.5: "A cyclist rides down the street.",
    4.0: "Two more bikes pass a parked red car.",
    8.0: "The riders turn the corner.",
}

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

# The header's session count and the number of sessions listed, read at one instant.
COUNTS = """
const m = /(\\d+) sessions?\\b/.exec(document.getElementById('health').textContent);
return [m ? Number(m[1]) : null, document.querySelectorAll('#sessions li').length];
"""

# The open session's row in the list and the status panel, read at one instant.
ROW_AND_PANEL = """
const meta = document.querySelector('#sessions li.current .meta');
return [meta ? meta.textContent : null, document.getElementById('st-state').textContent,
        document.getElementById('st-clock').textContent];
"""

# Answers every POST .../ask with the server-sent events given (the rest of the page talks to the server).
STUB_ASK = """
const events = arguments[0];
const realFetch = window.fetch;
window.fetch = (url, init) => String(url).endsWith('/ask')
  ? Promise.resolve(new Response(events, {status: 200, headers: {'Content-Type': 'text/event-stream'}}))
  : realFetch(url, init);
"""

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

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


def _open_page(driver, server, token: str | None, fragment: str = "") -> None:
    driver.get(f"{server.url}/" + (f"?token={token}" if token is not None else "") + fragment)
    _wait(driver, lambda d: d.execute_script("return document.readyState") == "complete", 60)


def _current(driver) -> str | None:
    """The id of the session marked open in the sessions list (read in one go: the list is rebuilt)."""
    return driver.execute_script(
        "const r = document.querySelector('#sessions li.current'); return r && r.dataset.id"
    )


def _open_listed(driver, sid: str) -> None:
    """Click a session in the list (found and clicked in one go: the list is rebuilt every few seconds)."""
    driver.execute_script(f"document.querySelector('#sessions li[data-id=\"{sid}\"] button.open').click()")
    _wait(driver, lambda d: _current(d) == sid, 10, f"session {sid} did not open from the list")


def _value(driver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').value")


def _create_session(driver, name: str) -> str:
    """Create a session from the page (rekv preset, 1 fps); return its id from the sessions list."""
    from selenium.webdriver.support.ui import Select

    before = _current(driver)
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
    return _wait(
        driver,
        lambda d: _current(d) not in (None, before) and _current(d),
        30,
        "the new session is not marked in the sessions list",
    )


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

    # hovering a frame span shows a thumbnail of its frames; clicking another switches to it
    frames = [n for n in evidence if n.get_attribute("data-kind") != "text"]
    ActionChains(browser).move_to_element(frames[0]).perform()
    _wait(browser, lambda d: d.execute_script(IMAGE_LOADED) > 0, 60, "no thumbnail loaded on hover")
    assert browser.find_element("id", "thumb-box").is_displayed()
    assert "evidence" in _text(browser, "thumb-caption")
    browser.execute_script("arguments[0].click()", frames[-1])  # spans may overlap: click this one
    _wait(browser, lambda d: "active" in frames[-1].get_attribute("class"), 10)
    _wait(browser, lambda d: d.execute_script(IMAGE_LOADED) > 0, 60, "no thumbnail loaded on click")
    assert not _error_text(browser), _error_text(browser)

    # issue 35, item 7: a text span (a subtitle) shows its line, not thumbnails of the frames around it
    texts = [n for n in evidence if n.get_attribute("data-kind") == "text"]
    assert texts, "no subtitle was evidence (rekv's top 64 blocks hold all 13 of this clip's)"
    for node in (texts[0], texts[-1]):
        browser.execute_script("arguments[0].click()", node)
        _wait(browser, lambda d: d.find_element("id", "thumb-text").is_displayed(), 10, "no subtitle line")
        cue = CUES[float(node.get_attribute("data-t0"))]
        assert cue in _text(browser, "thumb-text"), (cue, _text(browser, "thumb-text"))
        assert not browser.find_element("id", "thumbs").is_displayed()  # no frame stands in for the text
        assert _text(browser, "thumb-caption").startswith("text evidence")
    chips = [c.text for c in browser.find_elements("css selector", "#evidence-list li")]
    assert any(CUES[0.5] in c for c in chips), chips  # the evidence list quotes the line too


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


def _row_matches_panel(driver) -> tuple[bool, list]:
    """Whether the open session's row in the list says what the status panel says (one instant)."""
    meta, st_state, st_clock = driver.execute_script(ROW_AND_PANEL)
    return meta == f"rekv · {st_state} · {st_clock}", [meta, st_state, st_clock]


def test_page_live_source(server, browser, tmp_path: Path) -> None:
    """Start a live source from the page (a file path on the server, under its --media-dir, at stream
    pace), watch the stream clock advance in the status panel, stop it. The open session's row in the
    sessions list keeps up with the status panel all along (issue 35, item 7: it lagged up to 5 s)."""
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
    same, seen = _row_matches_panel(browser)
    assert same and seen[1] == "live", seen  # the row says "live" as soon as the panel does
    start = time.monotonic()
    while time.monotonic() - start < 5 or int(_text(browser, "st-frames")) == 0:
        same, seen = _row_matches_panel(browser)  # sampled while the stream clock moves
        assert same, f"the sessions list lags the status panel: {seen}"
        assert time.monotonic() - start < 120, "the live source ingested nothing"
        time.sleep(0.25)
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


def test_page_header_counts_the_listed_sessions(server, browser) -> None:
    """Issue 35, item 7: the header's session count is the length of the list beside it, also when sessions
    are created and deleted elsewhere (it was read once, at page load)."""
    _open_page(browser, server, server.token)
    _wait(browser, lambda d: _text(d, "health").startswith("model "), 60, "health never loaded")
    _create_session(browser, "counted")
    counts = _wait(browser, lambda d: (c := d.execute_script(COUNTS))[0] == c[1] > 0 and c, 10, "header")
    with server.client() as api:
        other = api.post("/v1/sessions", json={"name": "elsewhere"}).raise_for_status().json()["id"]
        grown = _wait(browser, lambda d: d.execute_script(COUNTS)[1] == counts[1] + 1, 15, "list never grew")
        assert grown and browser.execute_script(COUNTS) == [counts[1] + 1] * 2
        api.delete(f"/v1/sessions/{other}").raise_for_status()
    _wait(browser, lambda d: d.execute_script(COUNTS)[1] == counts[1], 15, "the list never shrank")
    assert browser.execute_script(COUNTS) == [counts[1]] * 2
    assert re.search(rf"\b{counts[1]} sessions?\b", _text(browser, "health"))


def test_page_question_is_per_session(server, browser) -> None:
    """Issue 35, item 7: a question typed for one session does not carry over to another; each keeps its
    own until it is asked."""
    _open_page(browser, server, server.token)
    first = _create_session(browser, "draft-a")
    browser.find_element("id", "question").send_keys("What does the first camera show?")
    browser.find_element("id", "choices").send_keys("a car\na bike")
    second = _create_session(browser, "draft-b")
    assert second != first
    assert _value(browser, "question") == "" and _value(browser, "choices") == ""
    browser.find_element("id", "question").send_keys("And the second?")
    _open_listed(browser, first)
    assert _value(browser, "question") == "What does the first camera show?"
    assert _value(browser, "choices") == "a car\na bike"
    _open_listed(browser, second)
    assert _value(browser, "question") == "And the second?" and _value(browser, "choices") == ""


def test_page_preset_descriptions_are_short(server, browser) -> None:
    """Issue 35, item 7: the picked preset is described in one plain sentence of at most three lines; its
    exact summary and source wait behind "How it works" (they were a 20-line block)."""
    from selenium.webdriver.support.ui import Select

    _open_page(browser, server, server.token)
    _wait(browser, lambda d: d.find_elements("css selector", "#preset option"), 60, "no presets")
    with server.client() as api:
        presets = api.get("/v1/presets").raise_for_status().json()
    lines = """
        const e = document.getElementById('preset-summary');
        return e.getBoundingClientRect().height / parseFloat(getComputedStyle(e).lineHeight);
    """
    assert _value(browser, "preset") == "videokv"  # the default, with the longest summary
    shown = _text(browser, "preset-summary")
    assert 0 < len(shown) <= 160 and browser.execute_script(lines) <= 3.2, shown
    for preset in presets:
        Select(browser.find_element("id", "preset")).select_by_value(preset["name"])
        shown = _text(browser, "preset-summary")
        assert 0 < len(shown) <= 160 and browser.execute_script(lines) <= 3.2, (preset["name"], shown)
        assert shown == preset["description"] and preset["summary"] not in shown
        assert not browser.find_element("id", "preset-more").is_displayed()
    browser.find_element("css selector", "#preset-details summary").click()
    more = _text(browser, "preset-more")
    assert presets[-1]["summary"] in more and presets[-1]["source"] in more


def test_page_strips_control_characters(server, browser) -> None:
    """Issue 35, item 7: control characters (a model's raw bytes, terminal escapes) never reach the page:
    not in a streamed answer, not in the evidence, not in a session's name. Newlines and tabs stay. The
    answer comes from a stub of the ask route (the tiny model's bytes are not reliably control characters)."""
    with server.client() as api:
        name = "cam\x1b[31m\x00 one\x07"
        sid = api.post("/v1/sessions", json={"name": name}).raise_for_status().json()["id"]
    _open_page(browser, server, server.token, f"#session={sid}")
    _wait(browser, lambda d: _current(d) == sid, 30, "the session in the address did not open")

    pieces = ["Bell\x07 and\x00 escape\x1b[0m", "\ttab\r\nnext\x85line\x7f"]
    evidence = [{"t0": 0.0, "t1": 1.0, "kind": "text", "level": "full", "text": "[0.0s] a\x1b[1m line\x00"}]
    answer = {"question": "q", "answer": "".join(pieces), "evidence": evidence, "stats": {"answer_tokens": 2}}
    events = "".join(f"event: token\ndata: {json.dumps({'text': p})}\n\n" for p in pieces)
    browser.execute_script(STUB_ASK, events + f"event: answer\ndata: {json.dumps(answer)}\n\n")
    browser.find_element("id", "question").send_keys("Say something odd")
    browser.find_element("id", "ask").click()
    _wait(browser, lambda d: "tokens" in _text(d, "answer-meta") or _error_text(d), 30, "no answer")
    assert not _error_text(browser), _error_text(browser)
    shown = browser.execute_script("return document.getElementById('answer').textContent")
    assert shown == "Bell and escape[0m\ttab\nnextline", repr(shown)

    browser.find_element("css selector", "#evidence-list button").click()
    _wait(browser, lambda d: d.find_element("id", "thumb-text").is_displayed(), 10, "no evidence line")
    line = browser.execute_script("return document.getElementById('thumb-text').textContent")
    assert line == "[0.0s] a[1m line", repr(line)
    label = browser.execute_script(
        "return document.querySelector('#sessions li.current button.open').firstChild.textContent"
    )
    assert label == "cam[31m one", repr(label)
    assert not CONTROL.search(browser.execute_script("return document.body.textContent"))
