"""Issue 14, servers side: the dashboard answers bad input with 4xx and writes nothing, the
inference server bounds its decode memory, both refuse a foreign Host alike, and a taken
port is a one-line error. Each test names the item of the issue it covers."""

from __future__ import annotations

import asyncio
import io
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from _serve_fixtures import png_header_only
from ui_synth import make_digits_table, write_digits_run

from dataloupe.project import DataloupeError, Project
from dataloupe.serve import ServeConfig, create_app as create_server
from dataloupe.serve._bundle import ModelBundle, metadata_from_checkpoint
from dataloupe.serve._budget import BudgetBusy, DecodeBudget
from dataloupe.tables import open_table
from dataloupe.ui import create_app

MUT = {"x-dataloupe": "1"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("relui")
    p = Project.open(root / "proj")
    info = make_digits_table(p, root / "img")
    write_digits_run(p, "digits", info["features"], run="r1")
    return root


@pytest.fixture()
def proj(base, tmp_path):
    shutil.copytree(base / "proj", tmp_path / "proj")
    return Project.open(tmp_path / "proj")


def test_item13_thumbnails_of_corrupt_and_bomb_images_are_4xx(proj):
    t = open_table(proj, "digits")
    paths = t.to_arrow(columns=["id", "path"]).to_pylist()
    (t.image_root / paths[0]["path"]).write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # corrupt
    (t.image_root / paths[1]["path"]).write_bytes(png_header_only(9000, 9000))  # 81 Mpx bomb
    c = TestClient(create_app(proj), raise_server_exceptions=False)
    for row in paths[:2]:
        r = c.get(f"/api/tables/digits/samples/{row['id']}/thumb")
        assert r.status_code == 422 and "error" in r.json(), (row, r.status_code, r.text)
    assert c.get(f"/api/tables/digits/samples/{paths[2]['id']}/thumb").status_code == 200


def test_item13_huge_ids_are_4xx_and_never_become_other_ids(proj):
    c = TestClient(create_app(proj), raise_server_exceptions=False)
    huge = 10**30
    for url in (f"/api/runs/r1/samples/{huge}?table=digits", f"/api/tables/digits/samples/{huge}/thumb",
                f"/api/tables/digits/samples/{huge}/image", f"/api/tables/digits/samples/{huge}/history"):
        assert c.get(url).status_code == 422, url
    for ids in ([huge], [True], ["1"], [1.0], [-1]):
        r = c.post("/api/tables/digits/actions", json={"action": "exclude", "ids": ids}, headers=MUT)
        assert r.status_code == 422, (ids, r.status_code, r.text)
    assert open_table(proj, "digits").revision == 1  # nothing written
    r = c.post("/api/tables/digits/actions", json={"action": "exclude", "ids": [1]}, headers=MUT)
    assert r.status_code == 200 and r.json()["changed"] == 1


def test_item13_request_bodies_are_limited_before_they_are_read(proj):
    c = TestClient(create_app(proj, max_body_bytes=10_000), raise_server_exceptions=False)
    big = b'{"action": "exclude", "ids": [' + b"1," * 20_000 + b'1]}'
    r = c.post("/api/tables/digits/actions", content=big, headers=MUT | {"content-type": "application/json"})
    assert r.status_code == 413 and "too large" in r.json()["error"]

    def chunks():  # no Content-Length: counted as it arrives
        yield big[:5000]
        yield big[5000:]

    r = c.post("/api/tables/digits/actions", content=chunks(), headers=MUT | {"content-type": "application/json"})
    assert r.status_code == 413
    assert open_table(proj, "digits").revision == 1


def _bundle(tta: bool) -> ModelBundle:
    """A real bundle whose logits are the mean of the left and the right half of the image."""
    def forward(x: np.ndarray) -> np.ndarray:
        half = x.shape[-1] // 2
        return np.stack([x[..., :half].mean(axis=(1, 2, 3)), x[..., half:].mean(axis=(1, 2, 3))], 1) * 10

    return ModelBundle(classes=["left", "right"], image_size=8, mean=[0.0] * 3, std=[1.0] * 3, forward=forward,
                       source="test", backend="numpy", metadata={"tta_hflip": tta})


def _png(width: int, height: int, left: int = 255) -> bytes:
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 2] = left
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def test_item14_decodes_in_flight_are_bounded_and_busy_is_503():
    app = create_server(_bundle(False), ServeConfig(max_decodes=1, decode_wait_s=0.2))
    with TestClient(app) as c:
        budget = app.state.decode_budget

        budget.decodes = budget.max_decodes  # another request holds the only decode slot
        r = c.post("/predict", files={"file": ("a.png", _png(16, 16))})
        assert r.status_code == 503 and "busy" in r.json()["detail"] and r.headers["retry-after"] == "1"
        budget.decodes = 0
        r = c.post("/predict", files={"file": ("a.png", _png(16, 16))})
        assert r.status_code == 200
        assert c.get("/health").json()["decoding"]["refused_busy"] == 1


def test_item14_pixel_budget_waits_then_refuses():
    async def main():
        b = DecodeBudget(max_decodes=8, max_pixels=100, wait_s=0.1)
        async with b.hold(60):
            with pytest.raises(BudgetBusy):
                async with b.hold(60):  # 120 > 100 pixels in flight
                    pass
            async with b.hold(40):  # fits beside the first
                assert (b.decodes, b.pixels) == (2, 100)

        async def later():
            async with b.hold(60):
                return b.pixels

        async with b.hold(60):
            waiter = asyncio.create_task(later())  # waits for room, then gets it
            await asyncio.sleep(0.02)
        assert await waiter == 60

    asyncio.run(main())


def test_also_serving_applies_tta_hflip_as_measured():
    img = _png(8, 8)
    with TestClient(create_server(_bundle(False))) as c:
        plain = {p["label"]: p["probability"] for p in c.post("/predict", files={"file": ("a.png", img)}).json()["predictions"]}
    with TestClient(create_server(_bundle(True))) as c:
        tta = {p["label"]: p["probability"] for p in c.post("/predict", files={"file": ("a.png", img)}).json()["predictions"]}
    assert plain["left"] > 0.99  # the image is bright on the left
    assert tta == pytest.approx({"left": 0.5, "right": 0.5})  # mean over the image and its mirror
    ckpt = {"model_name": "m", "num_classes": 2, "classes": ["a", "b"], "image_size": 8, "small_input": False,
            "mean": [0] * 3, "std": [1] * 3, "tta_hflip": True}
    assert metadata_from_checkpoint(ckpt)["tta_hflip"] is True  # exports say so


def test_also_both_servers_refuse_a_foreign_host_alike(proj):
    ui = TestClient(create_app(proj, allowed_hosts=("127.0.0.1", "localhost", "::1")), base_url="http://evil.example")
    with TestClient(create_server(_bundle(False), ServeConfig(loopback_hosts_only=True)),
                    base_url="http://evil.example") as inf:
        a, b = ui.get("/api/tables"), inf.get("/health")
    assert a.status_code == b.status_code == 403
    assert a.json() == b.json()


def test_also_a_taken_port_is_a_one_line_error(tmp_path):
    from dataloupe._netsafety import check_port_free

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(DataloupeError, match=f"port {port} on 127.0.0.1 is already in use"):
            check_port_free("127.0.0.1", port)
        r = subprocess.run([sys.executable, "-m", "dataloupe", "ui", "--port", str(port),
                            "--project", str(tmp_path / "p")], capture_output=True, text=True, timeout=600,
                           env={"PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1] / "src"),
                                "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "already in use" in r.stderr and "open http" not in r.stdout
