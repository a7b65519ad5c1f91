"""A project whose tables live on S3: import, edit, log, time travel and train from it.

The S3 server is moto's, started by the test on 127.0.0.1 (no other network); the
project is configured only through the standard ``AWS_*`` environment variables, as a
user would. Runs, checkpoints and caches go to the local folder ``DATALOUPE_LOCAL_DIR``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from _train_helpers import CLASSES, FAST, SRC, write_digits

BUCKET = "dataloupe-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    moto_server = pytest.importorskip("moto.server",
                                      reason="moto[server] is not installed (pip install 'moto[server]')")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{server._server.server_port}"
        import boto3

        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                     region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_endpoint, tmp_path, monkeypatch):
    """The environment a user sets for an S3-compatible server (and nothing outside 127.0.0.1)."""
    env = {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "127.0.0.1",
           "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "DATALOUPE_LOCAL_DIR": str(tmp_path / "local")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "DATALOUPE_STORAGE_OPTIONS", "HTTP_PROXY",
              "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(k, raising=False)
    return env


def _objects(endpoint: str, prefix: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                      region_name="us-east-1")
    return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]


def test_import_edit_log_time_travel_and_train_on_s3(s3_env, tmp_path):
    from dataloupe.project import Project
    from dataloupe.tables import edit_table, import_imagefolder, list_tables, open_table, revert_table
    from dataloupe.train import train

    uri = f"s3://{BUCKET}/team"
    project = Project.open(uri)
    assert project.uri == uri and project.root == tmp_path / "local"
    write_digits(tmp_path / "img-train", start=0, n=120, undefined=10)
    write_digits(tmp_path / "img-val", start=1000, n=60)
    import_imagefolder(project, tmp_path / "img-train", table="dig-train", unlabeled_dir="undefined", classes=CLASSES)
    import_imagefolder(project, tmp_path / "img-val", table="dig-val", classes=CLASSES)

    # Every table file is on S3; nothing of the tables is on the local disk.
    keys = _objects(s3_env["AWS_ENDPOINT_URL"], "team/tables/dig-train/")
    assert "team/tables/dig-train/revisions.json" in keys and "team/tables/dig-train/table.json" in keys
    assert any(k.startswith("team/tables/dig-train/data.lance/") for k in keys)
    assert not (tmp_path / "local" / "tables").exists()
    assert [t["name"] for t in list_tables(project)] == ["dig-train", "dig-val"]

    # Edit twice, then read every revision back (time travel) from a fresh handle.
    edit_table(project, "dig-train", action="exclude", where="id < 5", message="exclude five")
    edit_table(project, "dig-train", action="set_label", where="id = 7", label="d3", message="relabel one")
    again = Project.open(uri)
    t = open_table(again, "dig-train")
    assert t.revision == 3 and [e["revision"] for e in t.log()] == [1, 2, 3]
    assert [e["message"] for e in t.log()][1:] == ["exclude five", "relabel one"]
    first = t.at(1).to_arrow()
    assert first.num_rows == 130 and (first["weight"].to_numpy() == 1).all()
    assert t.at(2).summary()["excluded"] == 5
    assert t.to_arrow(where="id = 7")["label"].to_pylist() == ["d3"]
    assert t.at(1).to_arrow(where="id = 7")["label"].to_pylist() != ["d3"]
    assert revert_table(again, "dig-train", 1).revision == 4
    assert open_table(again, "dig-train").summary()["excluded"] == 0

    # Train from the S3 table at an old revision; the run folder is local and names it.
    info = train(project, "dig-train@2", "dig-val", "fashion-mnist", run="s3run", tty=False,
                 overrides=[*FAST, "epochs=1", "num_workers=0"])
    assert info["status"] == "completed" and info["train_table"] == "dig-train" and info["train_revision"] == 2
    assert (tmp_path / "local" / "runs" / "s3run" / "checkpoints" / "best.pt").is_file()
    assert not _objects(s3_env["AWS_ENDPOINT_URL"], "team/runs/")

    # The command line reaches the same store through --project and the environment alone.
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "dataloupe", "table", "log", "dig-train", "--project", uri, "--json"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert [e["revision"] for e in json.loads(r.stdout)] == [1, 2, 3, 4]


def test_object_store_project_needs_a_local_folder_and_a_known_scheme(s3_env, monkeypatch):
    from dataloupe.project import DataloupeError, Project

    monkeypatch.delenv("DATALOUPE_LOCAL_DIR")
    with pytest.raises(DataloupeError, match="DATALOUPE_LOCAL_DIR"):
        Project.open(f"s3://{BUCKET}/team")
    with pytest.raises(DataloupeError, match="not stored on object storage"):
        Project.open(f"s3://{BUCKET}/team", local_dir=f"s3://{BUCKET}/runs")
    with pytest.raises(DataloupeError, match="unsupported store"):
        Project.open("ftp://host/x", local_dir="/tmp/x")


def test_image_root_on_an_object_store_is_refused(s3_env):
    import pyarrow as pa

    from dataloupe.project import DataloupeError, Project
    from dataloupe.tables import create_table

    project = Project.open(f"s3://{BUCKET}/refuse")
    with pytest.raises(DataloupeError, match="local or mounted folder"):
        create_table(project, "t", pa.table({"path": ["a/1.png"], "label": ["a"]}), classes=["a"],
                     image_root=f"s3://{BUCKET}/images")


def test_storage_options_from_the_environment():
    from dataloupe._storage import storage_options_from_env

    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "eu-west-1",
           "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "DATALOUPE_STORAGE_OPTIONS": '{"timeout": "30s"}'}
    assert storage_options_from_env("s3://b/p", env) == {
        "aws_access_key_id": "k", "aws_secret_access_key": "s", "aws_region": "eu-west-1",
        "aws_endpoint": "http://127.0.0.1:9000", "allow_http": "true", "timeout": "30s"}
    assert storage_options_from_env("gs://b/p", {"AWS_ACCESS_KEY_ID": "k"}) == {}
