"""report.html opened in a real headless Chromium (Chrome DevTools Protocol):
every image loads, nothing errors, and the verdict table shows summary.json's
verdict. Needs the OS's `chromium` and the `websocket-client` package."""
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

import pytest

from fastattr.cli import main

websocket = pytest.importorskip("websocket")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Page:
    """One CDP session on a fresh headless browser page, collecting errors."""

    def __init__(self, ws_url):
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.errors = []
        self.events = []

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                assert "error" not in msg, msg
                return msg.get("result", {})
            self._event(msg)

    def wait_for(self, event, timeout=30):
        end = time.time() + timeout
        while time.time() < end:
            if any(e["method"] == event for e in self.events):
                return
            self._event(json.loads(self.ws.recv()))
        raise TimeoutError(event)

    def _event(self, msg):
        self.events.append(msg)
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.errors.append(params["exceptionDetails"])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(params)
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(params["entry"])
        elif method == "Network.loadingFailed":
            self.errors.append(params)


@pytest.fixture
def browser():
    if CHROMIUM is None:
        # .ci/run installs it and sets FASTATTR_REQUIRE_BROWSER: there a missing browser fails.
        if os.environ.get("FASTATTR_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed but FASTATTR_REQUIRE_BROWSER is set (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    profile = tempfile.mkdtemp()
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    port_file = os.path.join(profile, "DevToolsActivePort")
    end = time.time() + 30
    while not os.path.exists(port_file) or not open(port_file).read().strip():
        assert proc.poll() is None and time.time() < end, "chromium did not start"
        time.sleep(0.1)
    port = int(open(port_file).read().split()[0])
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def check_verdict_table(page, verdict):
    """The page's first table is the verdict, and what it shows (method,
    sanity check, ranks, recommended, why) is summary.json's verdict."""
    shown = page.call("Runtime.evaluate", returnByValue=True, expression="""
        ({first: document.querySelector('table').id,
          recommendation: document.querySelector('p.verdict').textContent,
          rows: Array.from(document.querySelectorAll('#verdict tr')).slice(1)
                     .map(r => Array.from(r.cells).map(c => c.textContent.trim()))})
    """)["result"]["value"]
    assert shown["first"] == "verdict" and shown["recommendation"] == verdict["recommendation"]
    rows = {r[0]: r[1:] for r in shown["rows"]}
    assert len(rows) == len(shown["rows"]) and set(rows) == set(verdict["methods"])
    for method, (sanity, faithfulness, robustness, recommended, why) in rows.items():
        want = verdict["methods"][method]
        assert sanity.split(":")[0] == want["sanity"] in ("pass", "fail", "not checked", "not applicable")
        if want["sanity_value"] is not None:
            assert f"{want['sanity_value']:.2f}" in sanity and str(verdict["sanity_check"]["threshold"]) in sanity
        assert faithfulness == ("–" if want["faithfulness_rank"] is None else str(want["faithfulness_rank"]))
        assert robustness == ("–" if want["robustness_rank"] is None else str(want["robustness_rank"]))
        assert recommended == ("yes" if want["recommended"] else "no") and why == want["reason"]
    assert sorted(m for m, r in rows.items() if r[3] == "yes") == sorted(verdict["recommended"])


def test_report_loads_in_chromium(browser, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTATTR_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["audit", "--quiet", "--limit", "8", "--batch-size", "4", "--out", str(out),
                 "--methods", "saliency,integrated_gradients,guided_backprop"]) == 0
    targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{browser}/json/list"))
    page = Page(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
    for domain in ("Runtime", "Log", "Network", "Page"):
        page.call(f"{domain}.enable")
    page.call("Page.navigate", url=(out / "report.html").as_uri())
    page.wait_for("Page.loadEventFired")
    images = page.call("Runtime.evaluate", returnByValue=True, expression="""
        Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth,
                                                 h: i.naturalHeight, data: i.src.startsWith('data:image/png')}))
    """)["result"]["value"]
    # distributions (one per per-method metric), heatmaps, sanity checks, deletion/insertion
    assert len(images) >= 4, images
    assert all(i["complete"] and i["w"] > 0 and i["h"] > 0 and i["data"] for i in images), images
    alts = {i["alt"] for i in images}
    assert "example heatmaps" in alts and any(a.startswith("distribution of") for a in alts)
    headings = page.call("Runtime.evaluate", returnByValue=True,
                         expression="Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
    assert headings["result"]["value"] == [
        "Verdict", "Metrics", "Model accuracy, clean and under attack", "Distributions", "Example heatmaps",
        "Sanity checks (model-parameter randomization)", "Deletion and insertion", "Settings"]
    check_verdict_table(page, json.loads((out / "summary.json").read_text())["verdict"])
    time.sleep(0.2)
    page.call("Runtime.evaluate", expression="1")  # drain events that arrived after load
    assert page.errors == []
