"""Other models read featrec's features with stock Feast only: the SDK and the ``feast serve``
console script on a copy of ``feature_repo/``, in subprocesses where importing featrec fails.

featrec applies the repo and writes the rows (as the dataflows do); the readers get a
``PYTHONPATH`` whose first entry is a ``featrec`` package that raises on import, so any
featrec import on the read path would break the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from featrec.adapters.feast.repo import REDIS_ENV, apply_repo, feast_redis_connection
from featrec.adapters.feast.writers import RedisLayoutWriter
from featrec.settings import Settings
from featrec.testing.redis_server import free_port
from featrec.testing.shop import T0, world_rows

pytestmark = pytest.mark.e2e

SDK_SCRIPT = """
import json, sys
from pathlib import Path
from feast import FeatureStore

repo = Path(sys.argv[1])
store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / "feature_store.redis.yaml")
session = store.get_online_features(
    features=store.get_feature_service("session_v1"),
    entity_rows=[{"session_id": "s1"}],
).to_dict()
items = store.get_online_features(
    features=["item_features:price", "item_trending:trend_score", "item_neighbours:neighbour_ids"],
    entity_rows=[{"item_id": "a1"}, {"item_id": "__trending__"}],
).to_dict()
assert not [m for m in sys.modules if m == "featrec" or m.startswith("featrec.")]
print(json.dumps({"session": session, "items": items}))
"""


@pytest.fixture
def stock_env(tmp_path: Path, redis_settings: Settings) -> tuple[Path, dict[str, str]]:
    """The repo applied and written by featrec; an environment in which featrec is poison."""
    apply_repo(redis_settings)
    RedisLayoutWriter(redis.Redis.from_url(redis_settings.redis_url), "featrec").write(world_rows())
    poison = tmp_path / "poison" / "featrec"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text(
        "raise ImportError('the stock Feast read path must not import featrec')\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(poison.parent),
        REDIS_ENV: feast_redis_connection(redis_settings.redis_url),
    }
    return redis_settings.repo, env


def test_stock_feast_sdk_reads_featrec_features(stock_env: tuple[Path, dict[str, str]]) -> None:
    repo, env = stock_env
    out = subprocess.run(
        [sys.executable, "-c", SDK_SCRIPT, str(repo)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    session = data["session"]
    assert session["session_id"] == ["s1"]
    assert session["last_items"] == [["a1"]] and session["version"] == [T0]
    assert session["user_id"] == ["u1"] and session["last_category"] == ["A"]
    items = data["items"]
    assert items["price"] == [10.0, None]
    assert items["trend_score"] == [0.0, None]
    assert items["neighbour_ids"] == [["a2", "a3", "b1"], ["b2", "b3", "a5", "b4", "a6"]]


def test_feast_serve_reads_featrec_session_features_over_http(
    stock_env: tuple[Path, dict[str, str]],
) -> None:
    repo, env = stock_env
    feast = shutil.which("feast", path=str(Path(sys.executable).parent))
    assert feast is not None, "the feast console script is not installed next to python"
    port = free_port()
    args = [
        feast,
        "-c", str(repo),
        "-f", str(repo / "feature_store.redis.yaml"),
        "serve", "-p", str(port), "--no-access-log",
    ]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/get-online-features"
        payload = {"feature_service": "session_v1", "entities": {"session_id": ["s1", "s-none"]}}
        deadline = time.monotonic() + 90
        while True:
            try:
                response = httpx.post(url, json=payload, timeout=5)
                break
            except httpx.TransportError:
                if proc.poll() is not None:
                    pytest.fail(f"feast serve exited: {proc.stdout.read().decode()[-3000:]}")  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "feast serve did not start"
                time.sleep(0.3)
        assert response.status_code == 200, response.text
        body = response.json()
        names = body["metadata"]["feature_names"]
        results = dict(zip(names, body["results"], strict=True))
        assert results["session_id"]["values"] == ["s1", "s-none"]
        assert results["last_items"]["values"][0] == ["a1"]
        assert results["n_events"]["values"] == [1, None]
        assert results["version"]["values"][0] == T0
        # Feast's Redis store says PRESENT for an entity it never saw: a zero event
        # timestamp is how a reader tells "no row" (as featrec's own readers do)
        stamps = results["version"]["event_timestamps"]
        assert stamps[0].startswith("2023-11-14T22:13:20") and stamps[1].startswith("1970-01-01")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
