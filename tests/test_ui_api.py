"""Dashboard API through FastAPI's TestClient, over a real digits table and run folder."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from ui_synth import make_digits_table, make_meta_table, write_digits_run

from dataloupe.project import DataloupeError, Project
from dataloupe.tables import add_rows, open_table
from dataloupe.ui import DashboardConfig, create_app, decode, resolve_security
from dataloupe.ui._app import LOCAL_HOSTS

MUT = {"x-dataloupe": "1"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("uiproj")
    p = Project.open(root / "proj")
    info = make_digits_table(p, root / "img")
    write_digits_run(p, "digits", info["features"], run="r1")
    return root, info


@pytest.fixture()
def proj(base, tmp_path):
    """A private copy of the project (same image root), so edits do not leak between tests."""
    root, info = base
    shutil.copytree(root / "proj", tmp_path / "proj")
    return Project.open(tmp_path / "proj"), info


@pytest.fixture()
def client(proj):
    return TestClient(create_app(proj[0]))


def test_tables_lists_names_and_latest_revision(client):
    r = client.get("/api/tables")
    assert r.status_code == 200
    [t] = r.json()
    assert t["name"] == "digits" and t["revision"] == 1 and t["latest_revision"] == 1 and t["rows"] == 1797


def test_points_are_binary_columns_aligned_with_the_table(client, proj):
    p, info = proj
    r = client.get("/api/runs/r1/points", params={"table": "digits"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    header, cols = decode(r.content)
    assert header["n"] == 1797 and header["classes"][:10] == [str(i) for i in range(10)]
    assert {"id", "map_x", "map_y", "label", "predicted", "confidence", "loss", "aum", "findings"} <= set(cols)
    assert cols["map_x"].dtype == np.float32 and cols["label"].dtype == np.int8  # 10 classes
    labels = open_table(p, "digits").to_arrow(columns=["label"])["label"].to_pylist()
    expect = np.array([-1 if v is None else int(v) for v in labels])
    assert np.array_equal(cols["label"], expect)
    # the noisy labels that the model disagrees with are flagged as label issues (bit 0)
    issues = cols["id"][(cols["findings"] & 1) == 1]
    assert set(issues) and set(issues) <= set(np.flatnonzero(cols["label"] != cols["predicted"]))
    assert len(r.content) < 1797 * 60  # typed arrays, not per-point JSON


def test_points_of_an_old_revision_and_changed_flags(client):
    client.post("/api/tables/digits/actions", json={"action": "exclude", "ids": [3, 4]}, headers=MUT)
    h2, c2 = decode(client.get("/api/runs/r1/points", params={"table": "digits"}).content)
    h1, c1 = decode(client.get("/api/runs/r1/points", params={"table": "digits", "revision": 1}).content)
    assert h2["revision"] == 2 and h1["revision"] == 1
    assert list(c2["id"][c2["excluded"] == 1]) == [3, 4] and c1["excluded"].sum() == 0
    assert list(c2["id"][c2["changed"] == 1]) == [3, 4]


def test_set_label_makes_exactly_one_revision_with_its_diff(client, proj):
    p, _ = proj
    r = client.post("/api/tables/digits/actions", headers=MUT,
                    json={"action": "set_label", "ids": [10, 11, 12], "label": "7", "message": "fix three",
                          "expected_revision": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["committed"] and body["revision"] == 2 and body["changes"] == {"relabeled": 3}
    log = client.get("/api/tables/digits/log").json()
    assert [e["message"] for e in log] == ["import digits", "fix three"]
    d = client.get("/api/tables/digits/diff", params={"a": 1, "b": 2}).json()
    assert sorted(x["id"] for x in d["changed"]) == [10, 11, 12]
    assert all(x["label_b"] == "7" for x in d["changed"])


# action -> the field it changes, and to what (``mark_undefined`` is the older name of ``undefine``)
@pytest.mark.parametrize("action, field, value", [("undefine", "label", None), ("mark_undefined", "label", None),
                                                   ("exclude", "weight", 0.0), ("include", "weight", 1.0)])
def test_other_actions_one_revision_each(client, action, field, value):
    ids = [20, 21]
    if action == "include":
        client.post("/api/tables/digits/actions", json={"action": "exclude", "ids": ids}, headers=MUT)
    before = client.get("/api/tables").json()[0]["revision"]
    r = client.post("/api/tables/digits/actions", json={"action": action, "ids": ids}, headers=MUT).json()
    assert r["committed"] and r["revision"] == before + 1 and r["changed"] == 2
    d = client.get("/api/tables/digits/diff", params={"a": before, "b": r["revision"]}).json()
    assert sorted(x["id"] for x in d["changed"]) == ids
    other = "weight" if field == "label" else "label"
    for x in d["changed"]:
        assert x[f"{field}_b"] == value and x[f"{field}_a"] != value  # the named field changed, to the value
        assert x[f"{other}_b"] == x[f"{other}_a"]  # and nothing else did


def test_accept_suggested_labels_uses_the_runs_analysis(client, proj):
    p, _ = proj
    import json

    analysis = json.loads((p.runs_dir / "r1" / "analysis.json").read_text())
    sugg = {rec["id"]: rec["suggested_label"] for rec in analysis["label_issues"]}
    assert sugg
    chosen = sorted(sugg)[:5] + [0]  # id 0 has no suggestion: reported as skipped
    r = client.post("/api/tables/digits/actions", headers=MUT,
                    json={"action": "accept_suggested_labels", "ids": chosen, "run": "r1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["revision"] == 2 and body["changed"] == 5
    assert body["skipped"] == [{"count": 1, "reason": "no suggested label in the run's analysis"}]
    rows = open_table(p, "digits").to_arrow(columns=["label"]).to_pylist()
    assert all(rows[i]["label"] == sugg[i] for i in chosen[:5])


def test_accept_pseudo_labels_fills_undefined_samples(client, proj):
    p, _ = proj
    hdr, cols = decode(client.get("/api/runs/r1/points", params={"table": "digits"}).content)
    ids = [int(i) for i in cols["id"][cols["pseudo"] >= 0]]
    assert ids, "the synthetic analysis proposes pseudo-labels for undefined samples"
    r = client.post("/api/tables/digits/actions", headers=MUT,
                    json={"action": "accept_pseudo_labels", "ids": ids, "run": "r1"}).json()
    assert r["changes"] == {"labeled": len(ids)}
    assert open_table(p, "digits").summary()["undefined"] == 30 - len(ids)


@pytest.mark.parametrize("body, status, fragment", [
    ({"action": "set_label", "ids": [1, 999999], "label": "3"}, 400, "not in table"),
    ({"action": "set_label", "ids": [1], "label": "cat"}, 400, "unknown class 'cat'"),
    ({"action": "set_label", "ids": [], "label": "3"}, 400, "non-empty"),
    ({"action": "paint", "ids": [1]}, 400, "unknown action"),
    ({"action": "exclude", "ids": [1], "label": "3"}, 400, "takes no label"),
    ({"action": "exclude", "ids": ["x"]}, 422, "ids"),
    ({"action": "exclude", "ids": [1], "sneaky": 1}, 422, "sneaky"),
    ({"action": "accept_pseudo_labels", "ids": [1], "run": "nope"}, 404, "unknown run"),
    ({"action": "accept_suggested_labels", "ids": [0]}, 400, "needs the run"),
    ({"action": "exclude", "ids": [1], "expected_revision": 7}, 409, "reload"),
])
def test_invalid_bodies_are_refused_and_nothing_is_written(client, proj, body, status, fragment):
    p, _ = proj
    r = client.post("/api/tables/digits/actions", json=body, headers=MUT)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]
    assert open_table(p, "digits").latest_revision == 1


def test_mutations_need_the_custom_header(client, proj):
    r = client.post("/api/tables/digits/actions", json={"action": "exclude", "ids": [1]})
    assert r.status_code == 403 and "x-dataloupe" in r.json()["error"]
    assert open_table(proj[0], "digits").latest_revision == 1


def test_unknown_table_and_run_are_404_with_a_message(client):
    r = client.get("/api/tables/nope/log")
    assert r.status_code == 404 and "known tables: digits" in r.json()["error"]
    r = client.get("/api/runs/nope")
    assert r.status_code == 404 and "known runs: r1" in r.json()["error"]
    assert client.get("/api/runs/r1/points", params={"table": "nope"}).status_code == 404


def test_revert_makes_a_new_revision_equal_to_the_old_one(client, proj):
    client.post("/api/tables/digits/actions", json={"action": "exclude", "ids": [1, 2]}, headers=MUT)
    r = client.post("/api/tables/digits/revert", json={"revision": 1}, headers=MUT).json()
    assert r["revision"] == 3 and r["previous_revision"] == 2
    assert client.get("/api/tables/digits/diff", params={"a": 1, "b": 3}).json()["summary"] == {}
    assert open_table(proj[0], "digits").summary()["excluded"] == 0


def test_thumbnails_are_generated_once_and_cached(client, proj):
    p, _ = proj
    r = client.get("/api/tables/digits/samples/5/thumb", params={"size": 64})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    [f] = list((p.cache_dir / "ui-thumbs" / "digits" / "64").rglob("5-*.jpg"))
    stamp = f.stat().st_mtime_ns
    assert client.get("/api/tables/digits/samples/5/thumb", params={"size": 64}).content == r.content
    assert f.stat().st_mtime_ns == stamp
    assert client.get("/api/tables/digits/samples/5/thumb", params={"size": 37}).status_code == 400


def test_images_are_served_by_id_only(client):
    r = client.get("/api/tables/digits/samples/7/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
    assert client.get("/api/tables/digits/samples/123456/image").status_code == 404


@pytest.mark.parametrize("url", [
    "/api/tables/digits/samples/..%2F..%2Fetc%2Fpasswd/image",
    "/api/tables/digits/samples/../../../etc/passwd",
    "/api/tables/..%2F..%2Fetc/samples/1/image",
    "/api/tables/digits/samples/1/image/../../../../etc/passwd",
    "/static/..%2F..%2F_app.py",
    "/static/../_app.py",
])
def test_path_traversal_in_urls_is_refused(client, url):
    r = client.get(url)
    assert r.status_code in (403, 404, 422), (url, r.status_code)
    assert b"root:" not in r.content and b"create_app" not in r.content


def test_stored_paths_leaving_the_image_root_are_forbidden(client, proj, tmp_path):
    p, _ = proj
    secret = tmp_path / "secret.png"
    shutil.copy(open_table(p, "digits").image_root / "0" / "0000.png", secret)
    root = open_table(p, "digits").image_root
    os.symlink(secret, root / "link.png")
    rel_up = os.path.relpath(secret, root)
    add_rows(p, "digits", pa.table({"path": [rel_up, "link.png", "0/0000.txt"]}), message="bad paths")
    for sid in (1797, 1798):
        for kind in ("image", "thumb"):
            r = client.get(f"/api/tables/digits/samples/{sid}/{kind}")
            assert r.status_code == 403, (sid, kind, r.text)
            assert "outside" in r.json()["error"]
    assert client.get("/api/tables/digits/samples/1799/image").status_code == 403  # not an image type


def test_sample_detail_neighbours_and_label_history(client):
    client.post("/api/tables/digits/actions", json={"action": "set_label", "ids": [105], "label": "4"}, headers=MUT)
    d = client.get("/api/runs/r1/samples/105", params={"table": "digits"}).json()
    assert d["metrics"]["id"] == 105 and len(d["neighbours"]) == 12
    assert d["neighbour_method"].startswith("cosine") and 105 not in [n["id"] for n in d["neighbours"]]
    assert len(d["metrics"]["top"]) == 5 and d["metrics"]["top"][0]["class"] == d["metrics"]["predicted"]
    h = client.get("/api/tables/digits/samples/105/history").json()["revisions"]
    assert [r["revision"] for r in h] == [2, 1] and h[0]["label"] == "4" and h[1]["label"] != "4"
    assert client.get("/api/runs/r1/samples/99999", params={"table": "digits"}).status_code == 404


def test_run_info_history_and_findings(client):
    r = client.get("/api/runs/r1").json()
    assert r["best_val_top1"] == 0.9 and len(r["history"]) == 5 and r["metrics_tables"] == ["digits"]
    assert r["finding_counts"]["label_issues"] > 0 and r["finding_counts"]["outliers"] == 15
    [run] = client.get("/api/runs").json()
    assert run["run"] == "r1"


def test_token_guards_every_api_call(proj):
    c = TestClient(create_app(proj[0], token="s3cret-token"))
    assert c.get("/api/tables").status_code == 401
    assert c.get("/api/tables", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
    assert c.get("/api/tables", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    assert c.get("/api/tables/digits/samples/1/thumb", params={"token": "s3cret-token"}).status_code == 200
    assert c.get("/api/runs/r1/points", params={"table": "digits"}).status_code == 401
    assert c.get("/").status_code == 200  # the page itself holds no data
    r = c.post("/api/tables/digits/actions", json={"action": "exclude", "ids": [1]}, headers=MUT)
    assert r.status_code == 401 and open_table(proj[0], "digits").latest_revision == 1


def test_local_server_refuses_foreign_host_headers(proj):
    c = TestClient(create_app(proj[0], allowed_hosts=LOCAL_HOSTS), base_url="http://evil.example")
    r = c.get("/api/tables")
    assert r.status_code == 403 and "loopback" in r.json()["error"] == r.json()["detail"]  # as the inference server
    for ok in ("http://127.0.0.1:8765", "http://[::1]:8765", "http://127.0.0.2:8765", "http://localhost"):
        c = TestClient(create_app(proj[0], allowed_hosts=LOCAL_HOSTS), base_url=ok)
        assert c.get("/api/tables").status_code == 200, ok
    c = TestClient(create_app(proj[0], allowed_hosts=LOCAL_HOSTS), base_url="http://127.0.0.1.evil.example")
    assert c.get("/api/tables").status_code == 403


def test_security_rules_for_hosts():
    assert resolve_security(DashboardConfig()) == (None, LOCAL_HOSTS, False)
    assert resolve_security(DashboardConfig(host="127.0.0.2")) == (None, LOCAL_HOSTS, False)  # loopback too
    token, hosts, generated = resolve_security(DashboardConfig(host="0.0.0.0"))
    assert generated and len(token) >= 24 and hosts is None
    assert resolve_security(DashboardConfig(host="0.0.0.0", token="given-token")) == ("given-token", None, False)
    with pytest.raises(DataloupeError, match="at least 8"):
        resolve_security(DashboardConfig(host="0.0.0.0", token="short"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_on_a_public_host_generates_a_token_and_enforces_it(proj):
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "dataloupe", "ui", "--host", "0.0.0.0", "--port", str(port),
                             "--project", str(proj[0].root)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        token = None
        deadline = time.time() + 30
        while token is None and time.time() < deadline:
            line = proc.stdout.readline()
            if line.startswith("generated token: "):
                token = line.split(": ", 1)[1].strip()
        assert token, "the server prints the token it generated"
        url = f"http://127.0.0.1:{port}/api/tables"
        while time.time() < deadline:
            try:
                r = httpx.get(url)
                break
            except httpx.ConnectError:
                time.sleep(0.2)
        assert r.status_code == 401
        r = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()[0]["name"] == "digits"
    finally:
        proc.terminate()
        proc.wait(10)


def test_cli_rejects_a_short_token(proj):
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    r = subprocess.run([sys.executable, "-m", "dataloupe", "ui", "--host", "0.0.0.0", "--token", "abc",
                        "--project", str(proj[0].root)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "at least 8 characters" in r.stderr


def test_analysis_records_are_matched_to_the_table_by_run_role():
    from dataloupe.runs import table_roles
    from dataloupe.ui._runs import finding_ids, suggestions

    analysis = {
        "label_issues": [{"id": 1, "table": "train", "suggested_label": "a"},
                         {"id": 2, "table": "val", "suggested_label": "b"}],
        "outliers": [{"id": 3, "table": "val"}],
        "near_duplicates": [{"ids": [4, 5], "table": "train"}],
        "leakage": [{"val_id": 6, "train_id": 7}],
        "pseudo_labels": {"items": [{"id": 8, "predicted": "a"}]},
    }
    train = table_roles({"train_table": "t", "val_table": "v"}, "t")
    val = table_roles({"train_table": "t", "val_table": "v"}, "v")
    f = {k: v.tolist() for k, v in finding_ids(analysis, train).items()}
    assert f == {"label_issues": [1], "outliers": [], "near_duplicates": [4, 5], "leakage": [7], "pseudo_labels": [8]}
    f = {k: v.tolist() for k, v in finding_ids(analysis, val).items()}
    assert f == {"label_issues": [2], "outliers": [3], "near_duplicates": [], "leakage": [6], "pseudo_labels": []}
    assert suggestions(analysis, "label_issues", train) == {1: "a"}
    assert suggestions(analysis, "label_issues", val) == {2: "b"}
    assert suggestions(analysis, "pseudo_labels", train) == {8: "a"} and suggestions(analysis, "pseudo_labels", val) == {}


def test_points_without_map_or_analysis_fall_back_to_pca_of_embeddings(client, proj):
    import lance

    p, _ = proj
    path = p.runs_dir / "r1" / "metrics" / "digits.lance"
    t = lance.dataset(path).to_table()
    lance.write_dataset(t.drop_columns(["map_x", "map_y", "cluster"]), path, mode="overwrite")
    (p.runs_dir / "r1" / "analysis.json").unlink()
    header, cols = decode(client.get("/api/runs/r1/points", params={"table": "digits"}).content)
    assert header["n"] == 1797 and header["map_source"].startswith("PCA of the embeddings") and "dataloupe reduce" in header["map_source"]
    assert np.isfinite(cols["map_x"]).all() and cols["map_x"].std() > 0 and cols["findings"].sum() == 0
    d = client.get("/api/runs/r1/samples/3", params={"table": "digits"}).json()
    assert d["metrics"]["findings"] == [] and len(d["neighbours"]) == 12


def test_rows_added_after_the_run_are_counted_as_missing_metrics(client, proj):
    p, _ = proj
    add_rows(p, "digits", pa.table({"path": ["0/0000.png"], "label": ["0"]}), message="one more")
    header, cols = decode(client.get("/api/runs/r1/points", params={"table": "digits"}).content)
    assert header["n"] == 1797 and header["missing_metrics"] == 1 and 1797 not in cols["id"]


def test_review_queue_api_reads_and_writes_one_revision(client, proj):
    p, info = proj
    q = client.get("/api/runs/r1/review", params={"table": "digits", "strategy": "entropy", "limit": 5}).json()
    assert q["strategy"] == "entropy" and len(q["items"]) == 5 and q["total"] >= q["counts"]["undefined"] > 0
    ent = [it["entropy"] for it in q["items"]]
    assert ent == sorted(ent, reverse=True)
    a, b = q["items"][0]["id"], q["items"][1]["id"]
    body = {"run": "r1", "strategy": "entropy", "expected_revision": q["revision"],
            "answers": [{"id": a, "label": "7"}, {"id": b, "label": "__exclude__"}]}
    r = client.post("/api/tables/digits/review", json=body, headers=MUT).json()
    assert r["revision"] == q["revision"] + 1 and "review entropy: 2 answers" in r["message"]
    t = open_table(p, "digits")
    rows = {x["id"]: x for x in t.to_arrow(columns=["id", "label", "weight"]).to_pylist()}
    assert rows[a]["label"] == "7" and rows[b]["weight"] == 0
    # the same answers against the old revision: 409; an unknown class: 400, nothing written
    assert client.post("/api/tables/digits/review", json=body, headers=MUT).status_code == 409
    body["expected_revision"] = t.revision
    body["answers"] = [{"id": a, "label": "cat"}]
    r = client.post("/api/tables/digits/review", json=body, headers=MUT)
    assert r.status_code == 400 and "unknown class" in r.json()["error"]
    assert open_table(p, "digits").revision == t.revision
    assert client.get("/api/runs/r1/review", params={"table": "digits", "strategy": "nope"}).status_code == 400
    # ?recheck=N: the queue opens with the N given labels the evidence doubts most
    q = client.get("/api/runs/r1/review", params={"table": "digits", "recheck": 4, "limit": 6}).json()
    assert q["counts"]["recheck"] == 4 and [("recheck" in it["reasons"]) for it in q["items"]] == [True] * 4 + [False] * 2
    assert client.get("/api/runs/r1/review", params={"table": "digits", "recheck": -1}).status_code == 422


def test_run_states_the_models_quality(client, proj):
    t = client.get("/api/runs/r1").json()["trust"]
    assert set(t) == {"val_top1", "chance", "weak", "reasons", "message"} and t["chance"] == 0.1


def test_model_trust_verdicts():
    from dataloupe.analysis import model_trust

    assert model_trust(0.64, 2, labeled=100, label_issues=45)["weak"]  # the issue's 2-epoch model
    assert len(model_trust(0.64, 2, labeled=100, label_issues=45)["reasons"]) == 2
    assert not model_trust(0.95, 2, labeled=100, label_issues=5)["weak"]
    assert not model_trust(0.85, 10)["weak"] and model_trust(0.5, 10)["weak"]
    assert model_trust(None, 10)["weak"]


def test_points_header_names_the_latest_revision_after_an_edit(client, proj):
    from dataloupe.tables import edit_table

    p, _ = proj
    h1, _ = decode(client.get("/api/runs/r1/points", params={"table": "digits", "revision": 1}).content)
    assert h1["latest_revision"] == 1
    edit_table(p, "digits", action="exclude", ids=[3], message="x")
    h2, _ = decode(client.get("/api/runs/r1/points", params={"table": "digits", "revision": 1}).content)
    assert h2["revision"] == 1 and h2["latest_revision"] == 2  # not the cached blob's


def test_points_carry_margin_and_entropy_ranks_for_sorting(client, proj):
    import lance

    p, _ = proj
    _, cols = decode(client.get("/api/runs/r1/points", params={"table": "digits"}).content)
    m = lance.dataset(p.runs_dir / "r1" / "metrics" / "digits.lance").to_table(columns=["id", "margin", "entropy"]).sort_by("id")
    for name in ("margin", "entropy"):
        q = cols[f"{name}_q"]
        assert q.dtype == np.uint16
        v = m[name].to_numpy()
        order = np.argsort(v, kind="stable")
        assert np.all(np.diff(q[order].astype(int)) >= 0)  # same order as the values


def test_tags_and_comments_are_versioned_table_columns(client, proj):
    from dataloupe.tables import annotate, notes_of, revert_table, tag_counts

    p, _ = proj
    r = client.post("/api/tables/digits/notes", json={"ids": [1, 2, 3], "add_tags": ["blurry"], "expected_revision": 1},
                    headers=MUT).json()
    assert r["committed"] and r["revision"] == 2 and r["changed"] == 3 and "tag blurry on 3 samples" in r["message"]
    t, n = annotate(p, "digits", [2], add_tags=["odd"], remove_tags=["blurry"], comment="looks like a 7", message="m")
    assert n == 1 and t.revision == 3
    assert notes_of(t, 2) == {"tags": ["odd"], "comment": "looks like a 7"}
    assert tag_counts(t) == {"blurry": 2, "odd": 1}
    assert client.get("/api/tables/digits/tags", params={"tag": "blurry"}).json()["ids"] == [1, 3]
    assert client.get("/api/tables/digits/samples/2/notes").json()["comment"] == "looks like a 7"
    # nothing to change: no revision; a stale page: 409; a bad tag: 400
    assert annotate(p, "digits", [2], add_tags=["odd"], message="m")[1] == 0
    assert client.post("/api/tables/digits/notes", json={"ids": [4], "add_tags": ["x"], "expected_revision": 1},
                       headers=MUT).status_code == 409
    assert client.post("/api/tables/digits/notes", json={"ids": [4], "add_tags": ["no spaces"]}, headers=MUT).status_code == 400
    # versioned: the old revision has no notes, and a revert brings that back
    assert notes_of(open_table(p, "digits", 1), 2) == {"tags": [], "comment": None}
    assert notes_of(revert_table(p, "digits", 2, message="back"), 2) == {"tags": ["blurry"], "comment": None}


# ---- path and metadata filters (the points carry neither: the server matches ids) -----------
def test_path_filter_matches_text_in_the_path(client):
    assert client.get("/api/tables/digits").json()["filter_columns"] == ["weight", "split"]
    r = client.get("/api/tables/digits/match", params={"path": "0123"}).json()
    assert r["ids"] == [123] and r["rows"] == 1797
    three = client.get("/api/tables/digits/match", params={"path": "3/"}).json()["ids"]  # <true class>/<id>.png
    assert len(three) > 150 and all(i in three for i in (3, 13))
    assert client.get("/api/tables/digits/match", params={"path": "nowhere"}).json()["count"] == 0
    assert client.get("/api/tables/digits/match").json()["count"] == 1797  # no condition: every row


def test_metadata_filter_on_text_number_and_bool_columns(client, proj):
    p, _ = proj
    n, source = make_meta_table(p)
    assert client.get("/api/tables/meta").json()["filter_columns"] == ["weight", "split", "source", "width", "ok"]

    def ids(**q):
        r = client.get("/api/tables/meta/match", params=q)
        assert r.status_code == 200, r.text
        return r.json()["ids"]

    assert ids(column="source", value="SCAN") == [i for i in range(n) if source[i] == "scan-A"]
    assert ids(column="source", value="=photo") == [i for i in range(n) if source[i] == "photo"]
    assert ids(column="source", value="!scan") == [i for i in range(n) if source[i] != "scan-A"]
    assert ids(column="source", value="=") == [i for i in range(n) if source[i] is None]
    assert ids(column="width", value=">=48") == [i for i in range(n) if i % 50 >= 48]
    assert ids(column="width", value="10..12") == [i for i in range(n) if 10 <= i % 50 <= 12]
    assert ids(column="width", value="7") == [i for i in range(n) if i % 50 == 7]
    assert ids(column="ok", value="true") == list(range(0, n, 3))
    # both at once: path AND metadata
    assert ids(path="3/", column="source", value="=photo") == sorted(
        set(ids(path="3/")) & set(ids(column="source", value="=photo")))
    r = client.get("/api/tables/meta/match", params={"column": "width", "value": "wide"})
    assert r.status_code == 400 and "holds numbers" in r.json()["error"]
    r = client.get("/api/tables/meta/match", params={"column": "nope", "value": "x"})
    assert r.status_code == 400 and "unknown column 'nope'" in r.json()["error"] and "source" in r.json()["error"]


def test_match_reads_the_revision_asked_for(client):
    client.post("/api/tables/digits/actions", json={"action": "exclude", "ids": [5, 6]}, headers=MUT)
    now = client.get("/api/tables/digits/match", params={"column": "weight", "value": "0"}).json()["ids"]
    then = client.get("/api/tables/digits/match", params={"column": "weight", "value": "0", "revision": 1}).json()
    assert now == [5, 6] and then["ids"] == []
