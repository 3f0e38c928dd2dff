"""The report opens offline in a real browser: headless Chromium renders it and the page fetches nothing.

Chromium's net log (`--log-net-log`) is JSON: `constants` (among them `logEventTypes`, event name ->
number) and `events`, each `{"type", "source": {"id", "type"}, "phase", "params"}`. Every network
request is a URL_REQUEST source whose URL_REQUEST_START_JOB event carries `url`, `initiator`,
`site_for_cookies` and `network_isolation_key`; sockets and host resolutions opened without one
(preconnect, DNS prefetch) carry a `network_anonymization_key`. The browser itself contacts its own
services at start-up whatever the flags (account listing, updater): those requests have the initiator
"not an origin" and no top-frame site. Requests made for a page opened from a file have `file://` as
the top-frame site in those keys. The test attributes every event to its source and asserts that
no http(s) URL belongs to a source tied to the page; a control page with external references proves
the attribution catches them.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_report import build_world, run_report

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    # Hostnames never resolve: should anything try the network, nothing leaves the machine.
    "--host-resolver-rules=MAP * ~NOTFOUND",
)
KEYS_WITH_SITE = ("network_isolation_key", "network_anonymization_key", "site_for_cookies")
BROWSER_INITIATOR = "not an origin"
HTTP_URL = re.compile(r"\bhttps?://[^\s\"'<>]+")


def render(page: Path, out: Path) -> tuple[Image.Image, dict]:
    """Screenshot (1280x2000) and net log of `page` opened from disk in a fresh profile."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    shot, netlog = out / "shot.png", out / "netlog.json"
    command = [
        str(CHROMIUM),
        *FLAGS,
        f"--user-data-dir={out / 'profile'}",
        f"--log-net-log={netlog}",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        page.resolve().as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and shot.is_file(), f"chromium failed:\n{result.stderr[-2000:]}"
    log = json.loads(netlog.read_text())  # a complete log: Chromium closes the JSON on a clean exit
    return Image.open(shot).convert("RGB"), log


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def page_http_urls(log: dict) -> set[str]:
    """http(s) URLs (or hosts) in the net log that belong to a file:// page.

    A URL_REQUEST source is one request (redirects included): it is the page's when its start event
    names the page as top-frame site or has a page initiator. Other sources can be shared (the network
    quality estimator logs for everyone), so there each event counts on its own site key.
    """
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    events = log["events"]
    on_page = [
        any("file://" in str((e.get("params") or {}).get(k, "")) for k in KEYS_WITH_SITE) for e in events
    ]
    page_requests = {
        e["source"]["id"]
        for e, page in zip(events, on_page, strict=True)
        if names.get(e["type"]) == "URL_REQUEST_START_JOB"
        and "url" in (e.get("params") or {})
        and (page or e["params"].get("initiator") != BROWSER_INITIATOR)
    }
    url_request = log["constants"]["logSourceType"]["URL_REQUEST"]
    return {
        url
        for e, page in zip(events, on_page, strict=True)
        if page or (e["source"]["type"] == url_request and e["source"]["id"] in page_requests)
        for text in _strings(e.get("params") or {})
        for url in HTTP_URL.findall(text)
    }


@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> Path:
    world = build_world(tmp_path_factory.mktemp("world"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        run_report(world, monkeypatch)
    return world / "reports" / "index.html"


def test_report_renders_and_fetches_nothing(report_page, tmp_path):
    shot, log = render(report_page, tmp_path)
    pixels = np.asarray(shot)
    assert shot.size == (1280, 2000)
    assert pixels.std() > 20  # not a blank page
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 300  # text, tables and plots, not a flat fill
    assert pixels[:, :200].mean() > 200  # the page's white background: the page itself rendered
    assert log["events"], "the net log recorded nothing: cannot tell whether the page fetched anything"
    assert page_http_urls(log) == set()


def test_external_references_are_caught(tmp_path):
    page = tmp_path / "external.html"
    page.write_text(
        '<!DOCTYPE html><html><head><link rel="stylesheet" href="https://127.0.0.1:9/a.css"></head>'
        '<body><h1>external</h1><img src="http://127.0.0.1:9/x.png"></body></html>'
    )
    _, log = render(page, tmp_path)
    found = page_http_urls(log)
    assert {"http://127.0.0.1:9/x.png", "https://127.0.0.1:9/a.css"} <= found
    # The browser's own start-up requests (its account and update services) are not the page's.
    assert not any("google" in u for u in found), found
