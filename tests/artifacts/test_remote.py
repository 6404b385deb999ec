"""A remote repository on a local S3-compatible server (moto, on loopback): convert into
it, serve from it through the sha256-keyed cache, and refuse a tampered remote artifact."""

from __future__ import annotations

import os
import time

import httpx
import joblib
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge

from tests.conftest import free_port, start_server

moto_server = pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")
boto3 = pytest.importorskip("boto3")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """One S3 server for the module: fsspec reads FSSPEC_S3_ENDPOINT_URL once, at import."""
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",  # fsspec passes it to s3fs
        "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("xdg-cache")),  # the converter's mirror
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec.config

    fsspec.config.set_conf_env(fsspec.config.conf)
    client = boto3.client("s3", endpoint_url=env["FSSPEC_S3_ENDPOINT_URL"], region_name="us-east-1")
    client.create_bucket(Bucket="models")
    yield client, env
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    fsspec.config.conf.pop("s3", None)


def _convert(tmp_path, version: str, alpha: float, repo: str = "s3://models/repo") -> None:
    from converters import convert

    x, y = load_diabetes(return_X_y=True, as_frame=True)
    joblib.dump(Ridge(alpha=alpha).fit(x, y), tmp_path / f"ridge{version}.joblib")
    convert(tmp_path / f"ridge{version}.joblib", name="ridge", version=version, repo=repo, sample=x)


def test_convert_into_s3_then_serve_from_it(s3, tmp_path):
    client, env = s3
    _convert(tmp_path, "1", 1.0)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="models")["Contents"]}
    assert {"repo/ridge/1/model.onnx", "repo/ridge/1/manifest.json"} <= keys
    cache = tmp_path / "cache"
    srv = start_server(
        "s3://models/repo",
        tmp_path,
        "--cache-dir",
        str(cache),
        "--poll-seconds",
        "0.3",
        "--log-level",
        "warning",
        env={**env, "GATEWAY_ADMIN_TOKEN": "t"},
    )
    try:
        record = dict.fromkeys(["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"], 0.01)
        r = httpx.post(f"{srv.url}/v1/models/ridge/predict", json=record)
        assert r.status_code == 200 and r.headers["x-model-version"] == "1"
        blobs = list((cache / "blobs").glob("*.onnx"))
        assert len(blobs) == 1 and len(blobs[0].stem) == 64

        # a second version appears remotely; the admin promote finds it and writes serving.json to S3
        _convert(tmp_path, "2", 50.0)
        r = httpx.post(
            f"{srv.url}/admin/models/ridge/promote",
            json={"version": "2"},
            headers={"authorization": "Bearer t"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        served = client.get_object(Bucket="models", Key="repo/ridge/serving.json")["Body"].read()
        assert b'"live":"2"' in served

        # a third version whose remote bytes were swapped after conversion never loads
        _convert(tmp_path, "3", 200.0)
        client.put_object(Bucket="models", Key="repo/ridge/3/model.onnx", Body=b"tampered bytes")
        client.put_object(Bucket="models", Key="repo/ridge/serving.json", Body=b'{"live":"3","previous":"2"}')
        time.sleep(2.0)  # several polls
        r = httpx.post(f"{srv.url}/v1/models/ridge/predict", json=record)
        assert r.status_code == 200 and r.headers["x-model-version"] == "2"
        assert len(list((cache / "blobs").glob("*.onnx"))) == 2  # the tampered one was not cached
    finally:
        srv.stop()
    assert "does not match" in srv.log() or "sha256" in srv.log()


def test_existing_remote_version_is_refused(s3, tmp_path):
    from converters import ConversionError

    s3[0].create_bucket(Bucket="other")
    _convert(tmp_path, "1", 1.0, repo="s3://other/repo")
    with pytest.raises(ConversionError, match="immutable"):
        _convert(tmp_path, "1", 2.0, repo="s3://other/repo")


def test_cli_convert_writes_to_the_remote_not_a_local_lookalike(s3, tmp_path):
    """`gateway convert --repo s3://...` uploads; Path('s3://b/r') would be 's3:/b/r', a
    local directory that happens to look like a URL."""
    import subprocess
    import sys

    client, env = s3
    client.create_bucket(Bucket="cli")
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    joblib.dump(Ridge().fit(x, y), tmp_path / "ridge.joblib")
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "convert", str(tmp_path / "ridge.joblib"), "--name", "ridge",
         "--version", "1", "--repo", "s3://cli/repo"],
        cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="cli")["Contents"]}
    assert {"repo/ridge/1/model.onnx", "repo/ridge/1/manifest.json"} <= keys
    assert not (tmp_path / "s3:").exists()
