"""The dashboard as a triage tool, in real headless Chromium: select in the grid, label with
keys, confirm bulk edits, keep the person's place, work the review queue — and the defects
of issue 13, one test each.

Set ``DATALOUPE_SCREENSHOTS=1`` to also refresh the screenshots in ``docs/``.
"""

from __future__ import annotations

import re
import time

import lance
import pytest
from test_ui_browser import CHROMIUM, Server, _shot, browser, page  # noqa: F401 (shared fixtures)
from ui_synth import FASHION, UNDEFINED, make_digits_table, make_meta_table, write_digits_run

from dataloupe.project import Project
from dataloupe.tables import edit_table, open_table

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs headless Chromium at /usr/bin/chromium"),
    pytest.mark.timeout(180),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("triage")
    p = Project.open(root / "proj")
    info = make_digits_table(p, root / "img")
    write_digits_run(p, "digits", info["features"], run="run-2", val_top1=0.92)
    write_digits_run(p, "digits", info["features"], run="weak-1", val_top1=0.30)
    write_digits_run(p, "digits", info["features"], run="nomap", val_top1=0.9)
    path = p.runs_dir / "nomap" / "metrics" / "digits.lance"
    lance.write_dataset(lance.dataset(path).to_table().drop_columns(["map_x", "map_y"]), path, mode="overwrite")
    make_digits_table(p, root / "fimg", name="fashion", classes=FASHION)
    write_digits_run(p, "fashion", info["features"], run="fash-1", val_top1=0.85, classes=FASHION)
    srv = Server(p)
    yield p, srv, info
    srv.stop()


def _open(pg, site, run="run-2", table=None):
    pg.goto(site[1].url + f"#/run/{run}" + (f"?table={table}" if table else ""))
    pg.wait_for_function("window.__dl && window.__dl.ready && window.__dl.run && window.__dl.run.C", timeout=30000)


def _ready(pg):
    pg.wait_for_function("window.__dl.ready", timeout=30000)


def _box(pg, dx0=-200, dy0=-150, dx1=0, dy1=0):
    box = pg.locator("#overlay").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    pg.click("#mode-box")
    pg.mouse.move(cx + dx0, cy + dy0)
    pg.mouse.down()
    pg.mouse.move(cx + dx1, cy + dy1, steps=5)
    pg.mouse.up()


def _cell_ids(pg, n):
    return pg.evaluate(f"[...document.querySelectorAll('#grid .cell')].sort((a, b) => a.dataset.pos - b.dataset.pos)"
                       f".slice(0, {n}).map(c => +c.dataset.id)")


def _ids_with(p, table, where):
    return set(open_table(p, table).to_arrow(columns=["id"], where=where)["id"].to_pylist())


# ---- defect 1: grid cells can be selected and deselected -------------------------------
def test_grid_click_deselects_wrong_cells_before_the_action(page, site):
    p = site[0]
    _open(page, site)
    _box(page)
    sel = page.evaluate("__dl.run.selCount")
    assert 15 < sel < 1797
    page.wait_for_selector("#grid .cell")
    drop = _cell_ids(page, 3)
    for cid in drop:  # click = deselect; the cells stay in the grid, unticked
        page.click(f"#grid .cell[data-id='{cid}']")
    assert page.evaluate("__dl.run.selCount") == sel - 3
    assert page.locator("#grid .cell:not(.sel)").count() == 3
    assert page.evaluate("__dl.run.items.length") == sel
    want = set(page.evaluate("__dl.run.selectedIds()"))
    assert len(want) == sel - 3 and not want & set(drop)
    excluded_before = _ids_with(p, "digits", "weight = 0")
    before = open_table(p, "digits").latest_revision
    page.click("#act-exclude")
    page.wait_for_selector("#confirm-ok")  # more than CONFIRM_OVER samples: asks with the count
    assert f"{sel - 3}" in page.inner_text("#confirm-text")
    _shot(page, "ui-grid-selection.png")
    page.click("#confirm-ok")
    page.wait_for_function(f"__dl.run.revision === {before + 1} && __dl.ready")
    assert _ids_with(p, "digits", "weight = 0") - excluded_before == want


def test_grid_shift_click_select_all_and_invert(page, site):
    _open(page, site)
    page.wait_for_selector("#grid .cell")
    a, b = _cell_ids(page, 5)[0], _cell_ids(page, 5)[4]
    page.click(f"#grid .cell[data-id='{a}']")
    page.click(f"#grid .cell[data-id='{b}']", modifiers=["Shift"])
    assert page.evaluate("__dl.run.selCount") == 5
    assert "5 selected" in page.inner_text("#counts")
    page.click("#grid-invert")
    n = page.evaluate("__dl.run.items.length")
    assert page.evaluate("__dl.run.selCount") == n - 5
    page.click("#grid-all")
    assert page.evaluate("__dl.run.selCount") == n
    page.keyboard.press("Escape")
    assert page.evaluate("__dl.run.selCount") == 0


# ---- defect 2: nothing selected asks before touching every filtered row ------------------
def test_action_without_selection_asks_with_the_count(page, site):
    p = site[0]
    _open(page, site)
    page.select_option("#f-undefined", "only")
    n = page.evaluate("__dl.run.visible")
    assert 0 < n <= UNDEFINED
    before = open_table(p, "digits").latest_revision
    page.click("#act-undefine")
    page.wait_for_selector("#confirm-ok")
    assert f"all {n} samples" in page.inner_text("#confirm-text")
    page.click("#confirm-cancel")
    time.sleep(0.3)
    assert open_table(p, "digits").latest_revision == before
    assert page.is_hidden("#modal")


# ---- defect 3: an edit keeps filters, selection and scroll --------------------------------
def test_edit_keeps_filters_and_place(page, site):
    p = site[0]
    _open(page, site)
    page.select_option("#f-undefined", "only")
    page.select_option("#color-by", "confidence")
    n = page.evaluate("__dl.run.visible")
    page.wait_for_selector("#grid .cell")
    ids = page.evaluate("(() => { const r = __dl.run; r.setSelection([r.items[0], r.items[1]]); return r.selectedIds(); })()")
    assert len(ids) == 2
    before = open_table(p, "digits").latest_revision
    page.select_option("#action-label", "4")
    page.click("#act-set_label")
    page.wait_for_function(f"__dl.run.revision === {before + 1} && __dl.ready")
    assert page.input_value("#f-undefined") == "only" and page.input_value("#color-by") == "confidence"
    assert page.evaluate("__dl.run.visible") == n - 2  # the two labeled rows left the filter
    assert page.inner_text("#counts").startswith(f"{n - 2} of 1,797")
    assert all(open_table(p, "digits").to_arrow(columns=["label"], where=f"id = {i}")["label"][0].as_py() == "4" for i in ids)


# ---- defect 4: "latest" is the table's latest, and a refused edit can be cured ------------
def test_latest_marker_and_refused_edit_reload(page, site):
    p = site[0]
    _open(page, site)  # packs the latest revision (cached on the server)
    k = open_table(p, "digits").latest_revision
    edit_table(p, "digits", action="exclude", ids=[11], message="edit from elsewhere")
    page.goto(site[1].url + f"#/run/run-2?revision={k}")
    page.reload()
    page.wait_for_function("window.__dl.ready && __dl.run && __dl.run.C", timeout=30000)
    opts = page.eval_on_selector_all("#f-revision option", "os => os.map(o => o.textContent)")
    assert f"r{k}" in opts and f"r{k + 1} (latest)" in opts
    page.evaluate("__dl.run.setSelection([0, 1])")
    page.click("#act-exclude")
    page.wait_for_selector("#toast.error")
    page.click("#toast button:has-text('go to latest')")
    page.wait_for_function(f"__dl.run.revision === {k + 1} && __dl.ready")
    # edited elsewhere again: refused (409), and the toast's reload cures it
    edit_table(p, "digits", action="exclude", ids=[12], message="edit from elsewhere again")
    page.evaluate("__dl.run.setSelection([0, 1])")
    page.click("#act-exclude")
    page.wait_for_selector("#toast.error button:has-text('reload')")
    page.click("#toast button:has-text('reload')")
    page.wait_for_function(f"__dl.run.revision === {k + 2} && __dl.ready")
    page.evaluate("__dl.run.setSelection([0, 1])")
    page.click("#act-exclude")
    page.wait_for_function(f"__dl.run.revision === {k + 3} && __dl.ready")
    assert open_table(p, "digits").latest_revision == k + 3


# ---- defect 5: the PCA fallback says so, and a long first load shows progress ------------
def test_map_without_reduce_says_so_and_loading_shows_progress(page, site):
    def slow(route):
        time.sleep(1.6)
        route.continue_()

    page.route(re.compile(r".*/points\?.*"), slow)
    page.goto(site[1].url + "#/run/nomap")
    page.wait_for_function("window.__dl.ready && __dl.run && __dl.run.C", timeout=30000)
    log = page.evaluate("__dl.loadLog")
    assert any("packing" in t for t in log)
    assert any(re.search(r"… [1-9]\d* s", t) for t in log), log  # the elapsed time ticks
    hint = page.locator("#map-hint")
    assert hint.is_visible() and "dataloupe reduce nomap" in hint.inner_text()
    page.unroute(re.compile(r".*/points\?.*"))
    _open(page, site)
    assert page.locator("#map-hint").is_hidden()


# ---- defects 6 and 7: long class names fit ------------------------------------------------
def test_confusion_matrix_of_ten_long_names_fits_the_pane(page, site):
    _open(page, site, run="fash-1", table="fashion")
    page.click("#tab-confusion")
    fit = page.evaluate("""() => { const t = document.getElementById('confusion'), pane = document.getElementById('pane-confusion');
        const a = t.getBoundingClientRect(), b = pane.getBoundingClientRect();
        return {right: a.right, paneRight: b.right, sw: pane.scrollWidth, cw: pane.clientWidth}; }""")
    assert fit["right"] <= fit["paneRight"] + 0.5 and fit["sw"] <= fit["cw"], fit
    assert page.locator("#confusion tr").count() == 11
    page.check("#confusion-norm")
    assert page.locator("#confusion td").first.inner_text() in ("", *map(str, range(101)))
    _shot(page, "ui-confusion-fashion.png")


def test_grid_captions_always_show_the_confidence(page, site):
    _open(page, site, run="fash-1", table="fashion")
    page.wait_for_selector("#grid .cell .conf")
    bad = page.evaluate("""() => [...document.querySelectorAll('#grid .cell')].filter(c => {
        const b = c.querySelector('.conf'); if (!b) return true;
        const r = b.getBoundingClientRect(), k = c.getBoundingClientRect();
        return !/^\\d+%$/.test(b.textContent) || b.scrollWidth > b.clientWidth || r.right > k.right + 0.5 || r.left < k.left;
      }).length""")
    assert bad == 0
    title = page.get_attribute("#grid .cell", "title")
    assert "predicted" in title and "%" in title
    page.fill("#thumb-size", "192")
    page.dispatch_event("#thumb-size", "input")
    w = page.evaluate("document.querySelector('#grid .cell').getBoundingClientRect().width")
    assert w > 150


# ---- defect 8: the project chart ----------------------------------------------------------
def test_project_chart_axis_labels_and_one_line_per_val_table(page, site):
    page.goto(site[1].url)
    _ready(page)
    c = page.evaluate("__dl.accChart")
    assert 0 <= c["y0"] < c["y1"] <= 1
    for b in c["labels"]:
        assert b["left"] >= 0 and b["right"] <= c["width"] and b["bottom"] <= c["height"], b
    # digits runs and the fashion run are scored on different validation tables
    names = page.evaluate("""() => { const s = new Set(); for (const r of document.querySelectorAll('#runs tr td:nth-child(3)')) s.add(r.textContent.split('@')[0]); return [...s]; }""")
    assert {"digits", "fashion"} <= set(names)
    one = page.evaluate("""async () => { const { lineChart } = await import('/static/js/charts.js');
        const cv = document.createElement('canvas'); cv.style.width = '500px'; cv.style.height = '200px'; document.body.append(cv);
        const r = lineChart(cv, [{name: 'a', points: [[0, 0.639]]}], {labels: {0: 'a-very-long-run-name-that-goes-on (cm-train@12)'}, pct: true});
        cv.remove(); return r; }""")
    assert 0 <= one["y0"] < 0.639 < one["y1"] <= 1 and one["y1"] - one["y0"] < 0.3
    assert all(b["left"] >= 0 for b in one["labels"])
    series = page.evaluate("""async () => { const r = []; for (const el of [document.getElementById('acc-chart')]) r.push(el.__chart); return r[0]; }""")
    assert series is not None


# ---- defects 9 and 10: the report and the model's quality ---------------------------------
def test_report_names_tables_and_warns_about_a_weak_model(page, site, tmp_path):
    from dataloupe.report import write_report

    p = site[0]
    good = write_report(p, "run-2", out=tmp_path / "good.html")
    page.goto(good.as_uri())
    first = page.locator("h2:has-text('Label issues') + p + .grid .card").first
    text = first.inner_text()
    assert re.search(r"digits #\d+", text) and "suggests" in text
    assert page.locator("h2:has-text('Label issues') + p + .grid .good").count() == 0
    assert page.locator("#trust.trust").is_visible() and page.locator(".warn").count() == 0
    weak = write_report(p, "weak-1", out=tmp_path / "weak.html")
    page.goto(weak.as_uri())
    assert page.locator("p.warn#trust").is_visible() and "too weak" in page.inner_text("#trust")


def test_run_view_states_model_quality_and_warns_when_weak(page, site):
    _open(page, site, run="weak-1")
    t = page.locator("#trust")
    assert "weak" in t.get_attribute("class") and "too weak" in t.inner_text() and "30.0%" in t.inner_text()
    _open(page, site)
    t = page.locator("#trust")
    assert "weak" not in t.get_attribute("class") and "92.0%" in t.inner_text()


# ---- keyboard labeling and the sample view -----------------------------------------------
def test_label_hotkeys_in_grid_and_sample_view(page, site):
    p = site[0]
    _open(page, site)
    page.wait_for_selector("#grid .cell")
    page.keyboard.press("ArrowRight")  # cursor on the first cell
    page.keyboard.press("ArrowRight")  # ... then the second
    cid = page.evaluate("__dl.run.C.id[__dl.run.items[__dl.run.grid.cursor]]")
    before = open_table(p, "digits").latest_revision
    page.keyboard.press("7")  # the 7th class, "6"
    page.wait_for_function(f"__dl.run.revision === {before + 1} && __dl.ready")
    assert open_table(p, "digits").to_arrow(columns=["label"], where=f"id = {cid}")["label"][0].as_py() == "6"
    assert page.evaluate("__dl.run.grid.cursor") == 1  # the cursor stays where it was
    page.keyboard.press("Enter")  # open the sample view
    page.wait_for_selector("#detail-keys")
    shown = page.evaluate("__dl.run.C.id[__dl.run.panes.detailIndex]")
    assert shown == cid
    page.keyboard.press("9")  # the 9th class, "8"; the view moves on to the next sample
    page.wait_for_function(f"__dl.run.revision === {before + 2} && __dl.ready")
    page.wait_for_function(f"__dl.run.C.id[__dl.run.panes.detailIndex] !== {cid}")
    assert open_table(p, "digits").to_arrow(columns=["label"], where=f"id = {cid}")["label"][0].as_py() == "8"
    page.wait_for_selector("#detail-keys")
    _shot(page, "ui-sample-keys.png")
    nxt = page.evaluate("__dl.run.C.id[__dl.run.panes.detailIndex]")
    page.click("#detail-keys button[data-key='2']")  # the buttons do the same
    page.wait_for_function(f"__dl.run.revision === {before + 3} && __dl.ready")
    assert open_table(p, "digits").to_arrow(columns=["label"], where=f"id = {nxt}")["label"][0].as_py() == "1"
    # back in the grid, only included rows: x excludes the cursor's sample, which leaves the view
    page.keyboard.press("Escape")
    page.select_option("#f-excluded", "hide")
    page.keyboard.press("ArrowRight")
    cid = page.evaluate("__dl.run.C.id[__dl.run.items[__dl.run.grid.cursor]]")
    page.keyboard.press("x")
    page.wait_for_function(f"__dl.run.revision === {before + 4} && __dl.ready")
    assert open_table(p, "digits").to_arrow(columns=["weight"], where=f"id = {cid}")["weight"][0].as_py() == 0
    assert page.input_value("#f-excluded") == "hide"
    assert cid not in page.evaluate("Array.from(__dl.run.items, i => __dl.run.C.id[i])")


# ---- the review queue page ------------------------------------------------------------------
def test_review_queue_page_answers_with_keys_as_one_revision(page, site):
    p = site[0]
    page.goto(site[1].url + "#/review/run-2?table=digits")
    page.wait_for_function("window.__dl.ready && __dl.review && __dl.review.items", timeout=30000)
    items = page.evaluate("__dl.review.items.slice(0, 3)")
    assert items and page.locator("#review-list .rcell").count() > 3
    _shot(page, "ui-review.png")
    before = open_table(p, "digits").latest_revision
    page.keyboard.press("3")      # first: class "2" (key 3 = third class)
    page.keyboard.press("s")      # second: skipped
    page.keyboard.press("u")      # third: undefined
    assert "2 answers pending" in page.inner_text("#review-pending")
    page.click("#review-submit")
    page.wait_for_function("window.__dl.ready && __dl.lastReview")
    t = open_table(p, "digits")
    assert t.latest_revision == before + (1 if page.evaluate("__dl.lastReview.committed") else 0)
    lab = {r["id"]: r["label"] for r in t.to_arrow(columns=["id", "label"]).to_pylist()}
    assert lab[items[0]["id"]] == "2" and lab[items[2]["id"]] is None
    if page.evaluate("__dl.lastReview.committed"):
        assert "review margin: 2 answers" in t.entry["message"]
    # the answered rows left the queue; the skipped one is still there
    left = page.evaluate("__dl.review.items.map(i => i.id)")
    assert items[1]["id"] in left and items[0]["id"] not in left
    page.select_option("#review-strategy", "entropy")
    page.wait_for_function("window.__dl.ready && __dl.review && __dl.review.strategy === 'entropy'", timeout=30000)
    # re-check the 3 most doubted given labels first: they open the queue, the order is kept in the URL
    page.fill("#review-recheck", "3")
    page.dispatch_event("#review-recheck", "change")
    page.wait_for_function("window.__dl.ready && __dl.review && __dl.review.recheck === 3", timeout=30000)
    assert "recheck=3" in page.url and "strategy=entropy" in page.url
    head = page.evaluate("__dl.review.items.slice(0, 4).map(i => i.reasons.includes('recheck'))")
    assert head == [True, True, True, False]
    assert "recheck" in page.inner_text(".review-bar")


# ---- the view in the URL, saved views, export, and dataloupe.show ----------------------------
def test_view_state_lives_in_the_url(page, site):
    _open(page, site)
    page.select_option("#f-correct", "incorrect")
    page.select_option("#color-by", "loss")
    page.evaluate("__dl.run.setSelection([3, 4, 5, 200])")
    page.wait_for_function("location.hash.includes('sel=')")
    url = page.url
    assert "correct=incorrect" in url and "color=loss" in url
    want = page.evaluate("__dl.run.selectedIds()")
    page.goto("about:blank")
    page.goto(url)
    page.wait_for_function("window.__dl.ready && __dl.run && __dl.run.C && __dl.run.selCount > 0", timeout=30000)
    assert page.input_value("#f-correct") == "incorrect" and page.input_value("#color-by") == "loss"
    assert page.evaluate("__dl.run.selectedIds()") == want
    # export the selection as CSV (downloaded by the browser)
    with page.expect_download() as dl:
        page.click("#grid-export")
    text = open(dl.value.path()).read().splitlines()
    assert text[0] == "id,label,predicted,confidence" and [int(r.split(",")[0]) for r in text[1:]] == sorted(want)
    # save the view under a name; it is offered in the views list
    page.once("dialog", lambda d: d.accept("wrong ones"))
    page.click("#save-view")
    assert "wrong ones" in page.inner_text("#views")
    _shot(page, "ui-views.png")


def test_show_opens_the_dashboard_on_a_selection(page, site):
    import dataloupe

    s = dataloupe.show("digits", ids=[2, 3, 5], run="run-2", project=site[0], open_browser=False)
    try:
        assert "sel=2,3,5" in s.url and "table=digits" in s.url
        page.goto(s.url)
        page.wait_for_function("window.__dl.ready && __dl.run && __dl.run.C && __dl.run.selCount === 3", timeout=30000)
        assert sorted(page.evaluate("__dl.run.selectedIds()")) == [2, 3, 5]
        page.goto("about:blank")  # leave before the server goes
    finally:
        s.stop()
    from dataloupe.project import DataloupeError

    with pytest.raises(DataloupeError, match="no run has metrics"):
        dataloupe.show("nope", project=site[0], open_browser=False)


def test_grid_sorts_by_margin(page, site):
    _open(page, site)
    page.select_option("#sort-by", "margin")
    q = page.evaluate("Array.from(__dl.run.items.slice(0, 200), i => __dl.run.C.margin_q[i])")
    assert q == sorted(q) and q[0] < q[-1]


def test_compare_two_runs_sample_by_sample_and_per_class_metrics(page, site):
    p, _, info = site
    edit_table(p, "digits", action="set_label", label="0", ids=list(range(300, 420)), message="120 wrong labels")
    write_digits_run(p, "digits", info["features"], run="cmp-1", val_top1=0.9)  # learns from them
    _open(page, site)
    page.click("#tab-confusion")
    assert page.locator("#per-class tr").count() == 11
    page.click("#tab-compare")
    page.select_option("#compare-run", "cmp-1")
    page.wait_for_selector("#compare-table")
    shown = {r.get_attribute("data-group"): int(r.locator("td.num").inner_text().replace(",", ""))
             for r in page.locator("#compare-table tr").all()}
    t = open_table(p, "digits").to_arrow(columns=["id", "label"])
    lab = dict(zip(t["id"].to_pylist(), t["label"].to_pylist()))

    def preds(run):
        m = lance.dataset(p.runs_dir / run / "metrics" / "digits.lance").to_table(columns=["id", "predicted"])
        return dict(zip(m["id"].to_pylist(), m["predicted"].to_pylist()))

    a, b = preds("run-2"), preds("cmp-1")
    want = {"both": 0, "fixed": 0, "broken": 0, "neither": 0}
    for i, lb in lab.items():
        if lb is None:
            continue
        ra, rb = a[i] == lb, b[i] == lb
        want["both" if ra and rb else "fixed" if ra else "broken" if rb else "neither"] += 1
    assert shown == want and want["fixed"] + want["broken"] > 0
    _shot(page, "ui-compare.png")
    page.click("#compare-table tr[data-group='fixed']")
    assert page.evaluate("__dl.run.selCount") == want["fixed"]


def test_loop_page_shows_iterations_diffs_and_review_lists(page, site):
    import json

    p = site[0]
    r1 = edit_table(p, "digits", action="set_label", label="5", ids=[20, 21, 22], message="loop digits-default iteration 1").table.revision
    r0 = r1 - 1
    folder = p.root / "loops" / "digits-default"
    folder.mkdir(parents=True, exist_ok=True)
    its = [{"iteration": 1, "revision": r0, "labeled": 1767, "undefined": 30, "excluded": 0, "val_top1": 0.80,
            "val_top1_last": 0.79, "run": "run-2", "next_revision": r1, "changes": {"excluded": 3}},
           {"iteration": 2, "revision": r1, "labeled": 1767, "undefined": 30, "excluded": 3, "val_top1": 0.84,
            "val_top1_last": 0.83, "run": "weak-1", "next_revision": r1, "changes": {}}]
    (folder / "state.json").write_text(json.dumps({"loop": "digits-default", "train": "digits", "val": "digits",
                                                   "policy": "default", "iterations": its, "stopped": "2 iteration(s) done"}))
    (folder / "review-it1.json").write_text(json.dumps({"flagged": [1700, 1701, 1702, 5]}))
    page.goto(site[1].url)
    _ready(page)
    page.click("#loops a:has-text('digits-default')")
    page.wait_for_selector("#loop-iterations tr[data-iteration='2']")
    c = page.evaluate("__dl.loopChart")
    assert 0 <= c["y0"] < 0.79 and 0.84 < c["y1"] <= 1
    _shot(page, "ui-loop.png")
    page.click("tr[data-iteration='1'] .loop-diff")
    page.wait_for_selector("#modal:not([hidden]) table.diff")
    assert f"revision {r0} → {r1}" in page.inner_text("#modal h2")
    page.click("#modal .close")
    page.click("tr[data-iteration='1'] .loop-review")
    page.wait_for_function("window.__dl.ready && __dl.run && __dl.run.C && __dl.run.selCount === 4", timeout=30000)


def test_pairs_side_by_side_and_find_similar(page, site):
    _open(page, site)
    page.click("#tab-pairs")
    page.wait_for_selector("#pairs .pair-row")
    assert page.locator("#pairs .pair-row").count() == 1 and page.locator("#pairs .pair-row img").count() == 2
    _shot(page, "ui-pairs.png")
    page.click("#pairs .pair-select")
    assert sorted(page.evaluate("__dl.run.selectedIds()")) == [0, 1]
    page.keyboard.press("Escape")
    page.wait_for_selector("#grid .cell")
    page.dblclick("#grid .cell >> nth=0")
    page.wait_for_selector("#detail-similar")
    page.click("#detail-similar")
    page.wait_for_function("__dl.run.selCount === 51")
    _shot(page, "ui-similar.png")


def test_id_filter_and_histograms_in_the_range_filters(page, site):
    _open(page, site)
    assert int(page.get_attribute("#h-confidence", "data-shown")) == 1797
    page.fill("#f-ids", "100-109, 1700")
    page.press("#f-ids", "Enter")
    page.wait_for_function("__dl.run.visible === 11")
    assert int(page.get_attribute("#h-confidence", "data-shown")) == 11
    ink = page.evaluate("""() => { const c = document.getElementById('h-loss');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }""")
    assert ink > 50
    page.wait_for_function("location.hash.includes('ids=')")
    page.locator("#h-loss").scroll_into_view_if_needed()  # the range filters sit below the checkboxes
    _shot(page, "ui-filters.png")


def test_tags_and_comments_from_the_dashboard(page, site):
    from dataloupe.tables import notes_of

    p = site[0]
    _open(page, site)
    page.evaluate("__dl.run.setSelection([30, 31, 32])")
    ids = page.evaluate("__dl.run.selectedIds()")
    before = open_table(p, "digits").latest_revision
    page.fill("#action-tag", "smudged")
    page.click("#act-tag")
    page.wait_for_function(f"__dl.run.revision === {before + 1} && __dl.ready")
    assert all(notes_of(open_table(p, "digits"), i)["tags"] == ["smudged"] for i in ids)
    page.wait_for_selector("#f-tag option[value='smudged']", state="attached")
    page.evaluate("__dl.run.setSelection(null)")
    page.select_option("#f-tag", "smudged")
    page.wait_for_function("__dl.run.visible === 3")
    page.dblclick("#grid .cell >> nth=0")
    page.wait_for_selector("#detail-comment")
    assert "smudged" in page.inner_text("#detail-notes")
    cid = page.evaluate("__dl.run.C.id[__dl.run.panes.detailIndex]")
    page.fill("#detail-comment", "ink blot on the left")
    page.click("#detail-save-comment")
    page.wait_for_function(f"__dl.run.revision === {before + 2} && __dl.ready")
    assert notes_of(open_table(p, "digits"), cid)["comment"] == "ink blot on the left"
    page.wait_for_function("document.getElementById('detail-comment') && document.getElementById('detail-comment').value === 'ink blot on the left'")
    _shot(page, "ui-tags.png")


# ---- path and metadata filters --------------------------------------------------------------
def _shown_ids(pg):
    return set(pg.evaluate("(() => { const r = __dl.run, out = []; for (let i = 0; i < r.n; i++)"
                           " if (r.flags[i] & 1) out.push(r.C.id[i]); return out; })()"))


def test_path_and_metadata_filters_narrow_the_map_and_grid(page, site):
    p, _, info = site
    n, source = make_meta_table(p)
    write_digits_run(p, "meta", info["features"], run="meta-1")
    _open(page, site, run="meta-1")
    paths = open_table(p, "meta").to_arrow(columns=["id", "path"])
    in_3 = {i for i, s in zip(paths["id"].to_pylist(), paths["path"].to_pylist()) if "3/" in s}
    page.fill("#f-path", "3/")
    page.press("#f-path", "Enter")
    page.wait_for_function(f"__dl.run.visible === {len(in_3)}", timeout=20000)
    assert _shown_ids(page) == in_3 and page.evaluate("__dl.run.items.length") == len(in_3)  # map and grid
    photo = {i for i in in_3 if source[i] == "photo"}
    page.select_option("#f-meta-col", "source")
    page.fill("#f-meta-val", "=photo")
    page.press("#f-meta-val", "Enter")
    page.wait_for_function(f"__dl.run.visible === {len(photo)}", timeout=20000)
    assert _shown_ids(page) == photo
    page.wait_for_function("location.hash.includes('metav=')")
    url = page.url
    assert "path=3%2F" in url and "meta=source" in url
    # a refused value says why and keeps the filter as it was
    page.select_option("#f-meta-col", "width")
    page.fill("#f-meta-val", "wide")
    page.press("#f-meta-val", "Enter")
    page.wait_for_selector("#toast >> text=holds numbers", timeout=10000)
    assert page.evaluate("__dl.run.visible") == len(photo)
    # the URL brings the view back; reset shows every row
    page.goto("about:blank")
    page.goto(url)
    page.wait_for_function(f"window.__dl.ready && __dl.run && __dl.run.C && __dl.run.visible === {len(photo)}", timeout=30000)
    assert page.input_value("#f-path") == "3/" and page.input_value("#f-meta-val") == "=photo"
    page.click("#f-reset")
    page.wait_for_function(f"__dl.run.visible === {n}", timeout=10000)
