"""The demo page in headless Chromium: pick an image, drop an image, bars appear."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path

import pytest

from _serve_fixtures import digits_run, free_port, single_thread  # noqa: F401
from dataloupe.project import Project
from dataloupe.serve import ServeConfig, create_app, load_bundle

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"headless Chromium not found at {CHROMIUM} "
                       "(install Debian packages chromium chromium-driver, e.g. `make system-deps` as root)"),
]


@pytest.fixture
def live_server(digits_run):
    import uvicorn

    root, _ = digits_run
    app = create_app(load_bundle("digits", Project.open(root)), ServeConfig(token="pagetoken"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/?token=pagetoken"
    server.should_exit = True
    thread.join(timeout=10)


def test_demo_page_pick_and_drop_show_bars(live_server, digits_run):
    playwright = pytest.importorskip("playwright.sync_api")
    _, samples = digits_run
    zero, one = samples[0][0], samples[-1][0]
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(live_server)
            page.wait_for_function("document.getElementById('model').textContent.includes('2 classes')")

            page.set_input_files("#file", str(zero))  # pick
            page.wait_for_selector("#results .bar", timeout=30_000)
            labels = page.locator("#results .label").all_text_contents()
            assert labels[0] == "zero" and sorted(labels) == ["one", "zero"]
            widths = page.locator("#results .bar").evaluate_all("bars => bars.map(b => b.getBoundingClientRect().width)")
            assert widths[0] > widths[1] and widths[0] > 50

            page.evaluate(  # drag and drop a file onto the drop zone
                """async (b64) => {
                    const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                    const dt = new DataTransfer();
                    dt.items.add(new File([bytes], "one.png", {type: "image/png"}));
                    document.getElementById("drop").dispatchEvent(
                        new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
                }""",
                base64.b64encode(one.read_bytes()).decode(),
            )
            page.wait_for_function("document.querySelector('#results .label')?.textContent === 'one'", timeout=30_000)

            page.set_input_files("#file", files=[{"name": "bad.png", "mimeType": "image/png", "buffer": b"nope"}])
            page.wait_for_selector("#results .error", timeout=30_000)
            assert "not a readable image" in page.locator("#results .error").text_content()
        finally:
            browser.close()
