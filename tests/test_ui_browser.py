"""End-to-end dashboard tests in real headless Chromium (Debian ``chromium``) via Playwright.

Set ``DATALOUPE_SCREENSHOTS=1`` to also refresh the screenshots in ``docs/``.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from ui_synth import make_digits_table, write_digits_run

from dataloupe.project import Project
from dataloupe.tables import edit_table, open_table

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
DOCS = Path(__file__).resolve().parents[1] / "docs"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs headless Chromium at /usr/bin/chromium "
                       "(Debian packages chromium chromium-driver; `make system-deps` installs them as root)"),
    pytest.mark.timeout(180),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The dashboard app under uvicorn in a background thread."""

    def __init__(self, project: Project, token: str | None = None):
        import uvicorn

        from dataloupe.ui import create_app
        from dataloupe.ui._app import LOCAL_HOSTS

        self.port = _free_port()
        app = create_app(project, token=token, allowed_hosts=None if token else LOCAL_HOSTS)
        cfg = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        assert self.server.started
        self.url = f"http://127.0.0.1:{self.port}/"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("uibrowser")
    p = Project.open(root / "proj")
    info = make_digits_table(p, root / "img")
    write_digits_run(p, "digits", info["features"], run="run-1", val_top1=0.848)
    edit_table(p, "digits", action="exclude", ids=[5, 6, 7], message="exclude 3 unreadable digits")
    write_digits_run(p, "digits", info["features"], run="run-2", val_top1=0.9198)
    srv = Server(p)
    yield p, srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 850})
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, errors


def _shot(pg, name):
    if os.environ.get("DATALOUPE_SCREENSHOTS") == "1":
        pg.wait_for_function("[...document.querySelectorAll('img')].every(i => !i.src || i.complete)")
        pg.wait_for_timeout(300)
        pg.screenshot(path=str(DOCS / name))


def _open_run(pg, site, run="run-2"):
    pg.goto(site[1].url + f"#/run/{run}")
    pg.wait_for_function("window.__dl && window.__dl.ready", timeout=30000)


def test_project_view_lists_tables_runs_and_accuracy_chart(page, site):
    page.goto(site[1].url)
    page.wait_for_function("window.__dl && window.__dl.ready", timeout=30000)
    assert "digits" in page.inner_text("#tables") and "revision 2" in page.inner_text("#tables")
    runs = page.inner_text("#runs")
    assert "run-1" in runs and "84.80%" in runs and "91.98%" in runs
    ink = page.evaluate("""() => { const c = document.getElementById('acc-chart');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }""")
    assert ink > 500
    _shot(page, "ui-project.png")


def test_map_draws_points_and_filters_redraw(page, site):
    _open_run(page, site)
    st = page.evaluate("({n: __dl.run.n, drawn: __dl.run.scatter.drawCount, ink: __dl.run.scatter.countInkPixels()})")
    assert st["n"] == 1797 and st["drawn"] >= 1 and st["ink"] > 2000
    assert page.inner_text("#counts").startswith("1,797 of 1,797 shown")
    # keep only label 3: the count matches the table and fewer pixels are inked
    page.click("#f-label >> xpath=.. >> text=none")
    page.check("#f-label input[value='3']")
    labels = open_table(site[0], "digits").to_arrow(columns=["label"])["label"].to_pylist()
    n3 = labels.count("3")
    assert page.inner_text("#counts").startswith(f"{n3} of 1,797 shown")
    ink3 = page.evaluate("__dl.run.scatter.countInkPixels()")
    assert 0 < ink3 < st["ink"]
    # incorrect only, then colour by loss: still drawn, grid shows the same set
    page.select_option("#f-correct", "incorrect")
    page.select_option("#color-by", "loss")
    visible = page.evaluate("__dl.run.visible")
    assert visible < n3 and page.evaluate("__dl.run.items.length") == visible
    _shot(page, "ui-run-filtered.png")


def test_lasso_hover_and_sample_detail(page, site):
    _open_run(page, site)
    page.click("#mode-lasso")
    box = page.locator("#overlay").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    import math

    page.mouse.move(cx + 150, cy)
    page.mouse.down()
    for k in range(40):
        t = 2 * math.pi * k / 40
        page.mouse.move(cx + 150 * math.cos(t), cy + 120 * math.sin(t))
    page.mouse.up()
    sel = page.evaluate("__dl.run.selCount")
    assert 0 < sel < 1797
    assert page.evaluate("__dl.run.items.length") == sel
    cells = page.locator("#grid .cell")
    assert 0 < cells.count() < 200  # virtual scrolling: only rows in view exist
    page.wait_for_function("[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)")
    _shot(page, "ui-run-lasso.png")
    # box select replaces the selection; shift+lasso would add to it
    page.click("#mode-box")
    page.mouse.move(cx - 200, cy - 150)
    page.mouse.down()
    page.mouse.move(cx, cy, steps=5)
    page.mouse.up()
    boxed = page.evaluate("__dl.run.selCount")
    assert 0 < boxed < 1797 and boxed != sel
    inside = page.evaluate(f"""() => {{ const r = __dl.run, b = r.overlay.getBoundingClientRect(); let k = 0;
        for (let i = 0; i < r.n; i++) {{ const [x, y] = r.scatter.toPixel(r.C.map_x[i], r.C.map_y[i]);
          const px = x + b.left, py = y + b.top;
          if (px >= {cx - 200} && px <= {cx} && py >= {cy - 150} && py <= {cy}) k++; }} return k; }}""")
    assert abs(boxed - inside) <= 2  # points exactly on the edge may round either way
    # hover a drawn point: the tooltip shows its thumbnail
    page.click("#mode-pan")
    px = page.evaluate("""() => { const r = __dl.run, i = r.items[0];
        const [x, y] = r.scatter.toPixel(r.C.map_x[i], r.C.map_y[i]); return [x, y, r.C.id[i]]; }""")
    page.mouse.move(box["x"] + px[0], box["y"] + px[1])
    page.wait_for_selector("#tip:not([hidden])")
    assert page.get_attribute("#tip img", "src").startswith("/api/tables/digits/samples/")
    # double-click a grid cell (a click selects it): detail with metrics, neighbours and history
    cells.first.dblclick()
    page.wait_for_selector("#detail-history")
    assert page.locator("#pane-detail .nbrs img").count() == 12
    assert "r2" in page.inner_text("#detail-history")
    _shot(page, "ui-sample.png")


def test_confusion_cell_relabel_diff_and_revert(page, site):
    p = site[0]
    _open_run(page, site)
    before = open_table(p, "digits").latest_revision
    page.click("#tab-confusion")
    _shot(page, "ui-confusion.png")
    # the largest off-diagonal cell
    a, b = page.evaluate("""() => { let best = null, m = -1;
        for (const td of document.querySelectorAll('#confusion td')) {
          const a = +td.dataset.label, b = +td.dataset.pred, c = +(td.textContent || 0);
          if (a !== b && c > m) { m = c; best = [a, b]; } } return best; }""")
    page.click(f"#confusion td[data-label='{a}'][data-pred='{b}']")
    ids = page.evaluate("__dl.run.selectedIds()")
    assert ids and page.evaluate("__dl.run.selCount") == len(ids)
    _shot(page, "ui-run-grid.png")
    page.select_option("#action-label", str(b))
    page.fill("#action-message", "relabel confused digits")
    page.click("#act-set_label")
    if len(ids) > 10:  # bulk edits ask first, stating the count
        page.click("#confirm-ok")
    page.wait_for_function("window.__dl.lastAction && window.__dl.ready")
    t = open_table(p, "digits")
    assert t.latest_revision == before + 1 and t.entry["message"] == "relabel confused digits"
    rows = t.to_arrow(columns=["label"], where=f"id IN ({','.join(map(str, ids))})")["label"].to_pylist()
    assert rows == [str(b)] * len(ids)
    assert page.evaluate("__dl.run.revision") == before + 1
    # the toast offers the diff of exactly this revision
    page.click("#toast >> text=diff")
    page.wait_for_selector("#modal:not([hidden]) table.diff")
    assert page.locator("#modal table.diff tr").count() == len(ids) + 1
    assert f"relabeled: {len(ids)}" in page.inner_text("#modal .diff-summary")
    _shot(page, "ui-diff.png")
    page.click("#modal .close")
    # and can revert it: one more revision, labels back
    page.click("#toast >> text=revert")
    page.wait_for_function(f"__dl.run.revision === {before + 2} && window.__dl.ready")
    t = open_table(p, "digits")
    assert t.latest_revision == before + 2
    old = open_table(p, "digits", before).to_arrow(columns=["label"])
    assert t.to_arrow(columns=["label"]).equals(old)


def test_refused_action_shows_the_servers_message(page, site):
    _open_run(page, site)
    before = open_table(site[0], "digits").latest_revision
    # a concurrent edit lands after the page loaded: the page's edit is refused (409)
    edit_table(site[0], "digits", action="exclude", ids=[9], message="edit from elsewhere")
    page.evaluate("__dl.run.setSelection([0, 1])")
    page.click("#act-exclude")
    page.wait_for_selector("#toast.error")
    assert "reload" in page.inner_text("#toast")
    assert open_table(site[0], "digits").latest_revision == before + 1


def test_curves_pane(page, site):
    _open_run(page, site)
    page.click("#tab-curves")
    ink = page.evaluate("""() => { const c = document.getElementById('curve-acc');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }""")
    assert ink > 300


def test_token_protected_server_works_from_the_printed_url(browser, site):
    srv = Server(site[0], token="browser-token-123")
    try:
        ctx = browser.new_context(viewport={"width": 1200, "height": 800})
        pg = ctx.new_page()
        pg.goto(srv.url + "?token=browser-token-123#/run/run-2")
        pg.wait_for_function("window.__dl && window.__dl.ready", timeout=30000)
        assert "token" not in pg.url  # dropped from the address bar, kept for the session
        assert pg.evaluate("__dl.run.scatter.countInkPixels()") > 2000
        pg.wait_for_function("[...document.querySelectorAll('#grid img')].some(i => i.complete && i.naturalWidth > 0)")
        # without the token the same page cannot read anything
        other = browser.new_context().new_page()
        other.goto(srv.url + "#/run/run-2")
        other.wait_for_selector("h2.bad")
        assert "token" in other.inner_text("#view")
        ctx.close()
    finally:
        srv.stop()
