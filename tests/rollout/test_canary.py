"""Canary releases: a candidate beside the live version takes its weight's share of
requests (random, or sticky by X-Routing-Key), across every front door; promote, rollback
and weight 0 end it; serving.json carries it through restarts."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import joblib
import msgspec
import pandas as pd
import pytest

from converters import convert
from gateway.artifacts.repository import Canary, Repository, RepositoryError
from gateway.cli import main as cli
from gateway.lifecycle.registry import CanaryRoute
from tests.conftest import ROOT, start_server, two_classifier_versions

TOKEN = "canary-admin-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
ENV = {"GATEWAY_ADMIN_TOKEN": TOKEN}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """clf version 1 and a version 2 trained on the opposite labels, so the two disagree."""
    return two_classifier_versions(tmp_path_factory.mktemp("canary"), 300, 0, lambda frame, y: 1 - y)


@pytest.fixture
def repo(built, tmp_path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(built[0], root)
    return root


def _record(frame: pd.DataFrame) -> dict:
    return frame.iloc[0].to_dict()


async def _versions(url: str, body: dict, count: int, keys: list[str] | None = None) -> list[str]:
    """`count` requests, 16 at a time; the X-Model-Version each was answered by."""
    limit = asyncio.Semaphore(16)
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(i: int) -> str:
            headers = {"x-routing-key": keys[i]} if keys else {}
            async with limit:
                r = await client.post(url, json=body, headers=headers)
            assert r.status_code == 200, r.text
            return r.headers["x-model-version"]

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def _canary(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/admin/models/clf/canary", json=body, headers=AUTH, timeout=30)


def _state(url: str) -> dict:
    models = httpx.get(f"{url}/admin/models", headers=AUTH).json()["models"]
    return next(m for m in models if m["name"] == "clf")


@pytest.mark.slow
def test_canary_split_stickiness_and_bypass(repo, built, tmp_path):
    frame = built[1]
    srv = start_server(repo, tmp_path, "--log-level", "warning", "--poll-seconds", "0", env=ENV)
    try:
        predict = f"{srv.url}/v1/models/clf/predict"
        body = _record(frame)
        r = _canary(srv.url, {"version": "2", "weight": 20})
        assert r.status_code == 200, r.text
        assert r.json() == {"model": "clf", "live": "1", "canary": {"version": "2", "weight": 20.0}}
        assert Repository(repo).serving("clf").canary == Canary("2", 20.0)

        # Random routing: the share within 4 binomial standard deviations of 20 %.
        n = 2000
        served = asyncio.run(_versions(predict, body, n))
        share = served.count("2") / n
        assert set(served) == {"1", "2"}
        assert abs(share - 0.2) < 4 * math.sqrt(0.2 * 0.8 / n), share

        # Sticky routing: each key always lands on the side its hash picks.
        keys = [f"user-{i}" for i in range(300)]
        first = asyncio.run(_versions(predict, body, 300, keys))
        again = asyncio.run(_versions(predict, body, 300, keys))
        assert first == again
        expected = ["2" if CanaryRoute.of("2", 20).takes("clf", k.encode()) else "1" for k in keys]
        assert first == expected
        assert abs(first.count("2") / 300 - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 300)

        # The requests' metrics carry the version that served them; the weight is a gauge.
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert 'gateway_requests_total{model="clf",version="2",route="predict",code="200"}' in metrics
        assert 'gateway_canary_weight{model="clf",version="2"} 20' in metrics

        # Everything to the canary: V2 follows it too; an explicit version path does not.
        assert _canary(srv.url, {"version": "2", "weight": 100}).status_code == 200
        assert set(asyncio.run(_versions(predict, body, 20))) == {"2"}
        assert set(asyncio.run(_versions(f"{srv.url}/v1/models/clf/versions/1/predict", body, 20))) == {"1"}
        infer = {
            "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": list(body.values())}]
        }
        r = httpx.post(f"{srv.url}/v2/models/clf/infer", json=infer)
        assert r.status_code == 200 and r.headers["x-model-version"] == "2", r.text
        assert r.json()["model_version"] == "2"
    finally:
        srv.stop()


def test_canary_ends_and_survives_a_restart(repo, built, tmp_path):
    body = _record(built[1])
    srv = start_server(repo, tmp_path, "--log-level", "warning", "--poll-seconds", "0.2", env=ENV)
    try:
        # The CLI writes serving.json; the running server follows it.
        assert cli(["models", "canary", "clf", "2", "--weight", "30", "--repo", str(repo)]) == 0
        _wait(lambda: _state(srv.url)["canary"] == {"version": "2", "weight": 30.0})
        srv.stop()
        srv = start_server(repo, tmp_path, "--log-level", "warning", "--poll-seconds", "0.2", env=ENV)
        state = _state(srv.url)
        assert (state["live"], state["canary"]) == ("1", {"version": "2", "weight": 30.0})
        assert {m["version"] for m in state["loaded"]} == {"1", "2"}

        # Weight 0 ends it: serving.json drops it, the candidate is unloaded.
        r = _canary(srv.url, {"weight": 0})
        assert r.status_code == 200 and r.json()["canary"] is None, r.text
        assert Repository(repo).serving("clf").canary is None
        _wait(lambda: {m["version"] for m in _state(srv.url)["loaded"]} == {"1"})
        assert set(asyncio.run(_versions(f"{srv.url}/v1/models/clf/predict", body, 50))) == {"1"}

        # Rollback ends a canary and leaves the live version live.
        assert _canary(srv.url, {"version": "2", "weight": 50}).status_code == 200
        r = httpx.post(f"{srv.url}/admin/models/clf/rollback", headers=AUTH, timeout=30)
        assert r.status_code == 200 and r.json()["canary_ended"] == "2" and r.json()["version"] == "1", r.text
        assert _state(srv.url)["canary"] is None and Repository(repo).serving("clf").live == "1"

        # Promote makes the canary live and ends the canary.
        assert _canary(srv.url, {"version": "2", "weight": 50}).status_code == 200
        r = httpx.post(f"{srv.url}/admin/models/clf/promote", json={"version": "2"}, headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
        state = _state(srv.url)
        assert (state["live"], state["canary"]) == ("2", None)
        on_disk = msgspec.json.decode((repo / "clf" / "serving.json").read_bytes())
        assert on_disk == {"live": "2", "previous": "1"}
        assert set(asyncio.run(_versions(f"{srv.url}/v1/models/clf/predict", body, 50))) == {"2"}
    finally:
        srv.stop()


def _wait(condition, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_canary_admin_guard_and_refusals(repo, tmp_path):
    srv = start_server(repo, tmp_path, "--log-level", "warning", "--poll-seconds", "0", env=ENV)
    try:
        url = f"{srv.url}/admin/models/clf/canary"
        assert httpx.post(url, json={"version": "2", "weight": 10}).status_code == 401
        bad = {"authorization": "Bearer wrong"}
        assert httpx.post(url, json={"version": "2", "weight": 10}, headers=bad).status_code == 403
        for body, status in (
            ({"version": "2", "weight": 150}, 422),
            ({"version": "2", "weight": -1}, 422),
            ({"version": "2", "weight": "10"}, 422),
            ({"weight": 10}, 422),
            ({"version": "2", "weight": 10, "extra": 1}, 422),
            ({"version": "9", "weight": 10}, 404),
            ({"version": "1", "weight": 10}, 409),  # the live version
        ):
            r = _canary(srv.url, body)
            assert r.status_code == status, (body, r.text)
            assert "error" in r.json()
        r = httpx.post(url, content=b"{not json", headers=AUTH)
        assert r.status_code == 400
        assert _state(srv.url)["canary"] is None and Repository(repo).serving("clf").canary is None
        # The canary cannot be unloaded from under its traffic.
        assert _canary(srv.url, {"version": "2", "weight": 10}).status_code == 200
        r = httpx.post(f"{srv.url}/admin/models/clf/unload", json={"version": "2"}, headers=AUTH)
        assert r.status_code == 409, r.text
    finally:
        srv.stop()


def test_serving_json_with_and_without_a_canary(repo, capsys):
    path = repo / "clf" / "serving.json"
    # A file written before canaries existed still reads, and one without a canary is
    # written exactly as before.
    path.write_bytes(b'{"live": "1", "previous": null}')
    assert Repository(repo).serving("clf").canary is None
    assert cli(["models", "canary", "clf", "2", "--weight", "12.5", "--repo", str(repo)]) == 0
    assert capsys.readouterr().out.strip() == "clf: live 1, canary 2 at 12.5% (previous None)"
    assert msgspec.json.decode(path.read_bytes()) == {"live": "1", "canary": {"version": "2", "weight": 12.5}}
    assert cli(["models", "list", "--repo", str(repo)]) == 0
    listing = [line.split()[:3] for line in capsys.readouterr().out.splitlines()[1:]]
    assert listing == [["clf", "1", "*"], ["clf", "2", "canary:12.5%"]]
    assert cli(["models", "canary", "clf", "2", "--weight", "0", "--repo", str(repo)]) == 0
    assert msgspec.json.decode(path.read_bytes()) == {"live": "1"}
    assert cli(["models", "canary", "clf", "1", "--weight", "5", "--repo", str(repo)]) == 2  # live already
    assert cli(["models", "canary", "clf", "7", "--weight", "5", "--repo", str(repo)]) == 2
    assert cli(["models", "canary", "clf", "2", "--weight", "101", "--repo", str(repo)]) == 2
    assert "already live" in capsys.readouterr().err
    with pytest.raises(RepositoryError, match="percentage"):
        Repository(repo).set_canary("clf", "2", float("nan"))
    # Promote ends a canary; rollback ends one and keeps the live version.
    repo_ = Repository(repo)
    repo_.set_canary("clf", "2", 40)
    assert repo_.rollback("clf").canary is None and repo_.serving("clf").live == "1"
    repo_.set_canary("clf", "2", 40)
    state = repo_.set_live("clf", "2")
    assert (state.live, state.previous, state.canary) == ("2", "1", None)


def test_canary_route_weights_and_keys():
    """The draw itself, without HTTP: weights 0 and 100 are exact, a key always hashes
    the same way, and raising the weight only moves keys onto the canary."""
    keys = [f"k{i}".encode() for i in range(4000)]
    assert not any(CanaryRoute.of("2", 0).takes("m", k) for k in keys)
    assert all(CanaryRoute.of("2", 100).takes("m", k) for k in keys)
    at10 = {k for k in keys if CanaryRoute.of("2", 10).takes("m", k)}
    at30 = {k for k in keys if CanaryRoute.of("2", 30).takes("m", k)}
    assert at10 < at30
    assert abs(len(at30) / 4000 - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 4000)
    other_model = {k for k in keys if CanaryRoute.of("2", 30).takes("other", k)}
    assert other_model != at30  # salted by model: one client is not everyone's guinea pig
    draws = sum(CanaryRoute.of("2", 25).takes("m", None) for _ in range(8000))
    assert abs(draws / 8000 - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 8000)


@pytest.fixture
def diabetes_repo(tmp_path_factory) -> Path:
    """diabetes 1 (live) and 2, as the README's walk-through has them."""
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression, Ridge

    tmp = tmp_path_factory.mktemp("diabetes")
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    for version, model in (("1", LinearRegression()), ("2", Ridge(alpha=0.5))):
        joblib.dump(model.fit(x, y), tmp / f"d{version}.joblib")
        convert(tmp / f"d{version}.joblib", name="diabetes", version=version, repo=tmp / "repo", sample=x)
    Repository(tmp / "repo").set_live("diabetes", "1")
    return tmp / "repo"


def _walkthrough() -> list[tuple[str, str]]:
    """(command, what docs/rollout.md says it prints) from its shadow and canary section."""
    page = (ROOT / "docs" / "rollout.md").read_text()
    section = page.split("## Shadow and canary", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.*?)```", section, re.DOTALL)[0]
    steps: list[tuple[str, str]] = []
    command: list[str] = []
    for line in block.splitlines():
        if line.startswith("# "):
            steps.append(("\n".join(command), line[2:]))
            command = []
        elif line.startswith("export "):
            steps.append((line, ""))
        else:
            command.append(line)
    return steps


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_docs_canary_walkthrough_works_as_printed(diabetes_repo, tmp_path):
    srv = start_server(
        diabetes_repo, tmp_path, "--log-level", "warning", "--poll-seconds", "0.2",
        env={"GATEWAY_ADMIN_TOKEN": "change-me"},
    )  # fmt: skip
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    exports = ""
    try:
        steps = _walkthrough()
        assert len(steps) >= 5
        for command, expected in steps:
            if command.startswith("export "):
                exports += command + "\n"
                continue
            run = command.replace("http://127.0.0.1:8000", srv.url).replace("./demo-repo", str(diabetes_repo))
            out = subprocess.run(
                ["bash", "-c", exports + run], capture_output=True, text=True, env=env, timeout=60
            )
            assert out.returncode == 0, (command, out.stderr)
            if expected.startswith("{") and '"shadow":{' in expected:
                # The shadow's numbers depend on when its worker ran: the shape and versions must match.
                got, want = json.loads(out.stdout), json.loads(expected)
                assert _shape(got) == _shape(want), (command, out.stdout)
                assert (got["live"], got["canary"], got["shadow"]["version"]) == (
                    want["live"], want["canary"], want["shadow"]["version"],
                ), out.stdout  # fmt: skip
            elif expected.startswith("{"):
                assert json.loads(out.stdout) == json.loads(expected), (command, out.stdout)
            else:
                assert out.stdout.strip() == expected, (command, out.stdout, out.stderr)
        # The promote at the end reached the running server through serving.json.
        _wait(lambda: _state_of(srv.url, "diabetes", "change-me") == ("2", None))
    finally:
        srv.stop()


def _shape(value: object) -> object:
    """Keys all the way down, leaves only by kind."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return (
        "number" if isinstance(value, int | float) and not isinstance(value, bool) else type(value).__name__
    )


def _state_of(url: str, name: str, token: str) -> tuple[str, object]:
    models = httpx.get(f"{url}/admin/models", headers={"authorization": f"Bearer {token}"}).json()["models"]
    found = next(m for m in models if m["name"] == name)
    return found["live"], found["canary"]


def test_grpc_follows_the_canary_and_its_routing_key(repo, built, tmp_path):
    import tritonclient.grpc as tc

    from tests.conftest import free_port

    port = free_port()
    srv = start_server(repo, tmp_path, "--log-level", "warning", "--poll-seconds", "0", "--grpc-port", str(port),
                       env=ENV)  # fmt: skip
    try:
        assert _canary(srv.url, {"version": "2", "weight": 20}).status_code == 200
        client = tc.InferenceServerClient(f"127.0.0.1:{port}")
        tensor = tc.InferInput("input", [1, 4], "FP64")
        tensor.set_data_from_numpy(built[1].iloc[:1].to_numpy())
        keys = [f"grpc-{i}" for i in range(60)]
        served = [
            client.infer("clf", [tensor], headers={"x-routing-key": k}).get_response().model_version
            for k in keys
        ]
        assert served == ["2" if CanaryRoute.of("2", 20).takes("clf", k.encode()) else "1" for k in keys]
        assert set(served) == {"1", "2"}
        # An explicit version bypasses it, over gRPC as over HTTP.
        pinned = {
            client.infer("clf", [tensor], model_version="1").get_response().model_version for _ in range(20)
        }
        assert pinned == {"1"}
    finally:
        srv.stop()
