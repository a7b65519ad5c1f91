"""The inference server through FastAPI's TestClient: API, bad input, tokens, batching."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from _serve_fixtures import DIGIT_CLASSES, digits_run, png_header_only, single_thread  # noqa: F401
from dataloupe.project import DataloupeError, Project
from dataloupe.serve import MicroBatcher, ServeConfig, create_app, load_bundle, resolve_token, run_server
from dataloupe._netsafety import host_header_is_loopback, is_loopback


@pytest.fixture(scope="module")
def bundle(digits_run):
    root, _ = digits_run
    return load_bundle("digits", Project.open(root))


@pytest.fixture
def good(digits_run):
    _, samples = digits_run
    return samples[0][0].read_bytes()


def _ok(client, image: bytes, **params):
    r = client.post("/predict", files={"file": ("x.png", image, "image/png")}, params=params)
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def test_health_page_and_predict(bundle, good):
    with TestClient(create_app(bundle)) as client:
        h = client.get("/health").json()
        assert h["status"] == "ok" and h["classes"] == DIGIT_CLASSES and h["model"] == "digits"
        page = client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert 'type="file"' in page.text and "probability" in page.text
        preds = _ok(client, good)
        assert [p["label"] for p in preds][0] == "zero"
        probs = [p["probability"] for p in preds]
        assert len(preds) == 2 and probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert len(_ok(client, good, top_k=1)) == 1
        assert client.post("/predict", params={"top_k": 0}, files={"file": ("x.png", good)}).status_code == 422
        # same numbers as the library path
        expected = bundle.predict_proba(bundle.load_image(good)[None])[0]
        assert probs[0] == pytest.approx(float(expected.max()), abs=1e-6)


def test_bad_inputs_get_4xx_json_and_server_keeps_serving(bundle, good, tmp_path):
    limit = 50_000
    cases = {
        "not an image": ({"file": ("a.png", b"hello, I am text", "image/png")}, 400, "not a readable image"),
        "truncated": ({"file": ("a.png", good[: len(good) // 2], "image/png")}, 400, "not a readable image"),
        "zero bytes": ({"file": ("a.png", b"", "image/png")}, 400, "empty file (0 bytes)"),
        "bomb (PIL limit)": ({"file": ("b.png", png_header_only(30_000, 30_000), "image/png")}, 400, "image too large"),
        "bomb (our limit)": ({"file": ("b.png", png_header_only(9_000, 9_000), "image/png")}, 400, "image too large"),
        "over size limit": ({"file": ("big.png", good + b"\0" * (limit + 1), "image/png")}, 413, "file too large"),
        "wrong field": ({"image": ("a.png", good, "image/png")}, 422, "missing multipart field 'file' (got: image)"),
    }
    with TestClient(create_app(bundle, ServeConfig(max_upload_bytes=limit))) as client:
        for name, (files, status, message) in cases.items():
            r = client.post("/predict", files=files)
            assert r.status_code == status, (name, r.status_code, r.text)
            assert r.headers["content-type"] == "application/json", name
            assert "BytesIO" not in r.json()["detail"], name
            assert message in r.json()["detail"], (name, r.json())
            _ok(client, good)  # still serving
        r = client.post("/predict", json={"file": "x"})
        assert r.status_code == 400 and "multipart/form-data" in r.json()["detail"]
        r = client.post("/predict", data={"file": "just text"})
        assert r.status_code in (400, 422) and "detail" in r.json()
        r = client.post("/predict", content=b"--x\r\n", headers={"content-type": "multipart/form-data; boundary=x"})
        assert 400 <= r.status_code < 500 and "detail" in r.json()
        _ok(client, good)


def test_size_limit_holds_without_content_length(bundle, good):
    """A chunked upload with no Content-Length is cut off once it passes the limit."""
    limit = 20_000
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()

    def body():
        yield head
        for _ in range(200):  # 200 x 10 kB = 2 MB, far past the limit
            yield b"\0" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    with TestClient(create_app(bundle, ServeConfig(max_upload_bytes=limit))) as client:
        r = client.post("/predict", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 413 and "file too large" in r.json()["detail"]
        _ok(client, good)


def test_token_rule(bundle, good):
    assert resolve_token("127.0.0.1", None) == (None, False)
    assert resolve_token("localhost", None) == (None, False)
    assert resolve_token("::1", None) == (None, False)
    token, generated = resolve_token("0.0.0.0", None)
    assert generated and len(token) >= 24
    assert resolve_token("192.168.1.5", "s3cret-token") == ("s3cret-token", False)
    with pytest.raises(ValueError, match="at least 8 characters"):
        resolve_token("0.0.0.0", "short")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org") and is_loopback("127.0.0.2")
    with pytest.raises(ValueError):
        resolve_token("0.0.0.0", " ")
    with pytest.raises(DataloupeError, match="without a token"):
        run_server(bundle, host="0.0.0.0", port=1)  # refused before binding anything

    with TestClient(create_app(bundle, ServeConfig(token="s3cret-token"))) as client:
        assert client.get("/").status_code == 200  # the static page holds no data
        for path in ("/health",):
            r = client.get(path)
            assert r.status_code == 401 and "token" in r.json()["detail"]
            assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert client.get(path, headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
            assert client.get(path, params={"token": "s3cret-token"}).status_code == 200
        files = {"file": ("x.png", good, "image/png")}
        assert client.post("/predict", files=files).status_code == 401
        assert client.post("/predict", files=files, params={"token": "nope-nope-nope"}).status_code == 401
        r = client.post("/predict", files=files, headers={"Authorization": "Bearer s3cret-token"})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 2


def test_concurrent_requests_are_batched_with_same_answers(bundle, digits_run):
    _, samples = digits_run
    images = [p.read_bytes() for p, _ in samples]
    single = [bundle.predict_proba(bundle.load_image(b)[None])[0] for b in images]
    app = create_app(bundle, ServeConfig(max_batch=8, max_wait_ms=200))
    with TestClient(app) as client, ThreadPoolExecutor(len(images)) as pool:
        answers = list(pool.map(lambda b: client.post("/predict", files={"file": ("x.png", b)}), images))
        stats = client.get("/health").json()["batching"]
    assert all(r.status_code == 200 for r in answers)
    for r, probs in zip(answers, single):  # each caller gets its own image's answer
        got = {p["label"]: p["probability"] for p in r.json()["predictions"]}
        np.testing.assert_allclose([got[c] for c in DIGIT_CLASSES], probs, atol=1e-5)
    assert stats["requests"] == len(images)
    assert stats["batches"] < len(images) and stats["mean_batch"] > 1


def test_micro_batcher_respects_max_batch_and_routes_results():
    seen = []

    def predict(x):
        seen.append(len(x))
        return x * 2

    async def main():
        b = MicroBatcher(predict, max_batch=4, max_wait_ms=20)
        await b.start()
        try:
            outs = await asyncio.gather(*(b.submit(np.full(3, i, np.float32)) for i in range(10)))
        finally:
            await b.stop()
        return outs, b.stats()

    outs, stats = asyncio.run(main())
    assert [float(o[0]) for o in outs] == [2.0 * i for i in range(10)]
    assert max(seen) <= 4 and sum(seen) == 10 and len(seen) == 3
    assert stats["batches"] == 3 and stats["requests"] == 10

    def broken(x):
        raise RuntimeError("model exploded")

    async def failing():
        b = MicroBatcher(broken, max_batch=2, max_wait_ms=1)
        await b.start()
        try:
            with pytest.raises(RuntimeError, match="model exploded"):
                await b.submit(np.zeros(3, np.float32))
            with pytest.raises(RuntimeError, match="model exploded"):  # worker survives
                await b.submit(np.zeros(3, np.float32))
        finally:
            await b.stop()

    asyncio.run(failing())


def test_loopback_without_token_accepts_only_loopback_host_headers(bundle, good):
    assert host_header_is_loopback("127.0.0.1:8000") and host_header_is_loopback("localhost")
    assert host_header_is_loopback("[::1]:8000") and not host_header_is_loopback("evil.example:8000")
    assert not host_header_is_loopback(None)
    with TestClient(create_app(bundle, ServeConfig(loopback_hosts_only=True)), base_url="http://127.0.0.1:8000") as c:
        assert c.get("/health").status_code == 200
        _ok(c, good)
        r = c.get("/health", headers={"host": "evil.example:8000"})  # a DNS-rebinding page
        assert r.status_code == 403 and "loopback" in r.json()["detail"]
        assert c.post("/predict", files={"file": ("x.png", good)}, headers={"host": "evil.example"}).status_code == 403
