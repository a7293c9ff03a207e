"""The built package, installed into a fresh venv outside the checkout, adopted by a shop.

Builds the sdist and, from it, the wheel (``python -m build``), checks that both carry what
the dataflows and ``featrec init`` need, installs the wheel with its dependencies into a new
venv in a temp dir (pip's usual index and cache: no ``--no-deps``), and then, with neither the
checkout nor its venv on any path, runs the README's "Use it for your shop" walkthrough:
``featrec init shop && cd shop && featrec demo``; a foreign-schema CSV mapped, checked and
imported; batch features, item signals, a training set and the ranker; both dataflows over the
mapped file (once through stock ``python -m bytewax.run``); recommendations from the CLI and
from ``featrec serve``.

Slow by nature: on the shared 2-core machine about 3.5 minutes, measured: build 6 s, install
with dependencies 40-60 s (pip, from the configured index and cache), init + evaluate + demo
60 s, the walkthrough 90 s. The venv and the shop stay in pytest's temp dir (``--basetemp``
chooses it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest

from featrec.core.events.generator import GeneratorConfig, generate
from featrec.jobs.launch import free_ports

pytestmark = pytest.mark.e2e

CHECKOUT = Path(__file__).resolve().parents[2]
TYPES = {"view": "pageView", "click": "productClick", "cart": "addToCart", "purchase": "checkout"}
CLICKSTREAM = """
[mappings.clickstream]
delimiter = ";"
[mappings.clickstream.fields]
session_id = "sid"
user_id = "uid"
item_id = "product"
type = "event"
price = "price"
category = "cat"
[mappings.clickstream.ts]
column = "ts_ms"
unit = "ms"
[mappings.clickstream.types]
pageView = "view"
productClick = "click"
addToCart = "cart"
checkout = "purchase"
"""


class Installed:
    """The fresh venv and a clean environment to run its commands in."""

    def __init__(self, root: Path, venv: Path) -> None:
        self.root = root
        self.venv = venv
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("FEATREC_", "PYTHON", "VIRTUAL_ENV"))
        }
        self.env["PATH"] = f"{venv / 'bin'}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["OMP_NUM_THREADS"] = "1"

    def run(self, *args: str, cwd: Path, check: bool = True, timeout: float = 300) -> Any:
        result = subprocess.run(
            list(args),
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check:
            assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-3000:])
        return result


@pytest.fixture
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(CHECKOUT)],
        check=True,
        capture_output=True,
    )
    t_build = time.perf_counter() - t0
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    [wheel] = dist.glob("*.whl")
    t0 = time.perf_counter()
    pip = subprocess.run(
        # --no-compile: byte-compiling ~150 packages is a third of the install, and the few
        # modules the walkthrough imports compile on first use anyway.
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", str(wheel)],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    t_install = time.perf_counter() - t0
    print(f"\nwheel test: build {t_build:.0f} s, install into a fresh venv {t_install:.0f} s")
    return Installed(root, venv)


def test_the_installed_wheel_runs_the_shop_walkthrough(installed: Installed) -> None:
    """One test, one venv install (under pytest-xdist, separate tests could each pay for
    one): the artifacts, init and demo from anywhere, then the walkthrough."""
    t0 = time.perf_counter()
    check_artifacts(installed)
    check_init_and_demo_from_anywhere(installed)
    t_demo = time.perf_counter() - t0
    check_walkthrough_with_a_foreign_schema(installed)
    t_walk = time.perf_counter() - t0 - t_demo
    print(f"wheel test: init + evaluate + demo {t_demo:.0f} s, walkthrough {t_walk:.0f} s")


def check_artifacts(installed: Installed) -> None:
    dist = installed.root / "dist"
    [wheel] = dist.glob("*.whl")
    [sdist] = dist.glob("*.tar.gz")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "dataflows/sessions.py",
        "dataflows/items.py",
        "dataflows/evaluation.py",
        "dataflows/declared.py",
        "featrec/templates/project/featrec.toml",
        "featrec/templates/project/gitignore",
        "featrec/templates/feature_repo/feature_store.yaml",
        "featrec/templates/feature_repo/feature_store.redis.yaml",
        "featrec/templates/feature_repo/featrec_views.py",
        "featrec/templates/feature_repo/featrec_declared.py",
        "featrec/server/static/shop/index.html",
        "featrec/server/static/shop/shop.js",
        "featrec/server/static/shop/shop.css",
    ):
        assert needed in names, needed
    assert not any("/data/" in n and "feature_repo" in n for n in names)
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert {"feature_repo/feature_store.yaml", "dataflows/sessions.py", "pyproject.toml"} <= members

    where = installed.run(
        str(installed.venv / "bin" / "python"),
        "-c",
        "import featrec, dataflows; print(featrec.__file__); print(dataflows.__file__)",
        cwd=installed.root,
    ).stdout.split()
    assert all(path.startswith(str(installed.venv)) for path in where), where


def check_init_and_demo_from_anywhere(installed: Installed) -> None:
    work = installed.root / "demo-here"
    work.mkdir()
    outside = installed.run("featrec", "demo", cwd=work, check=False)
    assert outside.returncode == 1 and "featrec init DIR" in outside.stderr
    # evaluate needs no project: it builds its store from the shipped Feast repo template.
    installed.run("featrec", "generate", "--out", "ev.jsonl", "--events", "1500", cwd=work)
    evaluation = installed.run(
        "featrec",
        "evaluate",
        "--events",
        "ev.jsonl",
        "--test-share",
        "0.2",
        "--policies",
        "full,batch-only",
        "--out",
        "eval",
        cwd=work,
    )
    assert "HR@20" in evaluation.stdout and (work / "eval" / "report.md").is_file()
    installed.run("featrec", "init", "shop", cwd=work)
    shop = work / "shop"
    demo = installed.run("featrec", "demo", "--events", "3000", "--speed", "3000", cwd=shop)
    tail = demo.stdout[-2000:]
    assert "4/6 replay done" in demo.stdout and "6/6 live session" in demo.stdout, tail
    assert "training the ranker: done" in demo.stdout and "scorer model" in demo.stdout, tail
    again = installed.run("featrec", "init", "shop", cwd=work, check=False)
    assert again.returncode == 1 and "never overwrites" in again.stderr


def write_clickstream(path: Path, n_events: int) -> list[dict[str, str]]:
    """Generated traffic exported in a foreign schema: ``sid;uid;product;event;ts_ms;...``."""
    rows = []
    for e in generate(GeneratorConfig(n_events=n_events, seed=11)):
        rows.append(
            {
                "sid": e.session_id,
                "uid": e.user_id or "",
                "product": e.item_id,
                "event": TYPES[e.type],
                "ts_ms": str(int(e.ts.timestamp() * 1000)),
                "date": e.ts.date().isoformat(),
                "price": "" if e.price is None else repr(e.price),
                "cat": e.category or "",
            }
        )
    header = list(rows[0])
    lines = [";".join(header), *(";".join(r[c] for c in header) for r in rows)]
    lines.append("s-bad;u1;p1;pageView;yesterday;2026-11-02;;")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows


def check_walkthrough_with_a_foreign_schema(installed: Installed) -> None:
    work = installed.root / "walk"
    work.mkdir()
    installed.run("featrec", "init", "shop", cwd=work)
    shop = work / "shop"
    with (shop / "featrec.toml").open("a", encoding="utf-8") as f:
        f.write(CLICKSTREAM)
    history, live = shop / "history.csv", shop / "today.csv"
    rows = write_clickstream(history, 3000)
    write_clickstream(live, 600)
    run = installed.run
    notebooks = shop / "notebooks"
    notebooks.mkdir()

    check = run(
        "featrec",
        "map",
        "check",
        "../history.csv",
        "--mapping",
        "clickstream",
        "--rows",
        "5",
        cwd=notebooks,
    )
    assert "5 of 5 rows map" in check.stdout
    imported = run("featrec", "log", "import", "history.csv", "--mapping", "clickstream", cwd=shop)
    assert f"imported {len(rows):,} of {len(rows):,} valid events" in imported.stdout
    assert "1 invalid records" in imported.stderr and "'yesterday'" in imported.stderr

    run("featrec", "batch", "run", cwd=shop)
    run("featrec", "materialize", "--fast", cwd=shop)
    run("featrec", "items", "bootstrap", "--from-log", cwd=shop)
    run("featrec", "dataset", "build", cwd=shop)
    run("featrec", "train", cwd=shop)

    run("featrec", "run", "sessions", "--source", "today.csv", "--mapping", "clickstream", cwd=shop)
    run("featrec", "run", "items", "--source", "today.csv", "--mapping", "clickstream", cwd=shop)
    last = (live.read_text().splitlines()[-2]).split(";")
    session = last[0]
    features = json.loads(run("featrec", "features", session, "--json", cwd=shop).stdout)
    assert features["n_events"] >= 1

    # Stock bytewax runner on the installed dataflows, the mapping handed over as JSON.
    from featrec.core.events.mapping import merge_tables, parse_overrides

    table = merge_tables(
        {},
        parse_overrides(
            [
                "delimiter=;",
                "fields.session_id=sid",
                "fields.item_id=product",
                "fields.type=event",
                "ts.column=ts_ms",
                "ts.unit=ms",
                "types.addToCart=cart",
                "types.pageView=view",
                "types.productClick=click",
                "types.checkout=purchase",
            ]
        ),
    )
    env_before = dict(installed.env)
    installed.env.update(
        FEATREC_PROJECT=str(shop),
        FEATREC_SOURCE=str(live),
        FEATREC_HOME=str(shop / ".featrec-stock"),
        FEATREC_REPO=str(shop / "feature_repo"),
        FEATREC_SOURCE_MAPPING=json.dumps(table),
    )
    try:
        run(
            str(installed.venv / "bin" / "python"),
            "-m",
            "bytewax.run",
            "dataflows.sessions:flow()",
            cwd=installed.root,
        )
    finally:
        installed.env = env_before
    assert list((shop / ".featrec-stock" / "events").rglob("*.parquet"))

    answer = run("featrec", "recommend", session, cwd=shop).stdout
    assert answer.strip(), answer

    [port] = free_ports(1)
    server = subprocess.Popen(
        ["featrec", "serve", "--port", str(port), "--workers", "1", "--mapping", "clickstream"],
        cwd=shop,
        env=installed.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        body = _post_when_up(port, {"session_id": session, "k": 5})
        # The shop page's assets came with the wheel; the collector takes the shop's schema.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/shop/", timeout=10) as page:
            assert b"<html" in page.read().lower()
        posted = {"sid": "web-1", "product": "p7", "event": "addToCart"}
        posted["ts_ms"] = str(int(time.time() * 1000))
        accepted = _post(port, "/events", posted)
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert len(body["items"]) == 5, body
    assert accepted["accepted"] == 1, accepted
    [line] = (shop / ".featrec" / "collector" / "events.jsonl").read_text().splitlines()
    assert '"session_id":"web-1"' in line and '"type":"cart"' in line, line


def _post_when_up(port: int, payload: dict[str, Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/recommend",
        data=json.dumps(payload).encode(),
        headers={"content-type": "application/json"},
    )
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)


def _post(port: int, path: str, payload: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(payload).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())
