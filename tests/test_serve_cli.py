"""``dataloupe serve`` as a real process on a loopback port."""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest

from _serve_fixtures import cli_cmd, digits_run, free_port, single_thread, subprocess_env  # noqa: F401


def _wait_healthy(proc, url, headers=None, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            r = httpx.get(url + "/health", headers=headers, timeout=2)
            if r.status_code in (200, 401):
                return r
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError("server did not come up")


@pytest.fixture
def server(digits_run):
    procs = []

    def start(*extra):
        root, _ = digits_run
        port = free_port()
        proc = subprocess.Popen(cli_cmd("serve", "digits", "--port", str(port), *extra), env=subprocess_env(root),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        return proc, f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_command_answers_and_enforces_a_given_token(server, digits_run):
    _, samples = digits_run
    proc, url = server("--token", "t0ken-t0ken", "--max-batch", "4")
    assert _wait_healthy(proc, url).status_code == 401
    auth = {"Authorization": "Bearer t0ken-t0ken"}
    h = httpx.get(url + "/health", headers=auth).json()
    assert h["status"] == "ok" and h["batching"]["max_batch"] == 4
    r = httpx.post(url + "/predict", files={"file": samples[-1][0].read_bytes()}, headers=auth, timeout=60)
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert preds[0]["label"] == "one" and sum(p["probability"] for p in preds) == pytest.approx(1, abs=1e-5)
    r = httpx.post(url + "/predict", files={"file": b"junk"}, headers=auth, timeout=60)
    assert r.status_code == 400 and "not a readable image" in r.json()["detail"]
    assert httpx.get(url + "/").status_code == 200
    proc.terminate()
    out, _ = proc.communicate(timeout=20)
    assert f"{url}/?token=t0ken-t0ken" in out


def test_serve_refuses_short_token(digits_run):
    root, _ = digits_run
    r = subprocess.run(cli_cmd("serve", "digits", "--host", "0.0.0.0", "--token", "short"), env=subprocess_env(root),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--token must be at least 8 characters" in r.stderr
