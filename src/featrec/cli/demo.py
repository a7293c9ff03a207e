"""``featrec demo``: generate traffic, replay it through the real dataflow, watch features change.

Everything is the production path on the embedded default: the sessions dataflow runs under
``python -m bytewax.run``, writes the Feast online store (SQLite unless FEATREC_ONLINE_STORE
says otherwise), and this process reads the features back through stock Feast while the replay
is running. Then it trains the ranker on the same events with the user's own batch commands
(log import, batch run, materialize, dataset build, train), and ends with a live session
(:mod:`featrec.cli.live_session`) ranked by that model: events one by one, recommendations
updating with their reasons, and the fallback once the events stop.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Mapping

from featrec.cli.live_session import run_live_session
from featrec.core.events.model import Event
from featrec.core.features.catalog import SESSION_FEATURES
from featrec.errors import FeatrecError
from featrec.jobs.launch import start_flow, wait_all
from featrec.jobs.storefront import train_ranker
from featrec.settings import Settings

Echo = Callable[[str], None]

#: Wall-clock seconds the demo replay should last when no speed is given.
TARGET_REPLAY_S = 20.0


def run_demo(
    settings: Settings,
    *,
    n_events: int,
    speed: float | None,
    n_watch: int,
    echo: Echo,
) -> None:
    from featrec.adapters.feast.reader import FeastOnlineReader
    from featrec.adapters.feast.repo import apply_repo, open_store
    from featrec.adapters.files.event_files import write_events
    from featrec.core.events.generator import GeneratorConfig, generate

    demo_dir = settings.home / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    echo(f"1/6 applying the Feast repo {settings.repo} ({settings.online_store} online store)")
    apply_repo(settings)

    events = list(generate(GeneratorConfig(n_events=n_events, seed=42)))
    path = demo_dir / "events.jsonl"
    write_events(path, events)
    span = (events[-1].ts - events[0].ts).total_seconds()
    pace = speed if speed else max(1.0, span / TARGET_REPLAY_S)
    watched = _pick_sessions(events, n_watch)
    echo(
        f"2/6 generated {len(events):,} events ({span / 60:.0f} min of shop time) -> {path}; "
        f"replaying at {pace:.0f}x"
    )

    env = {
        **os.environ,
        **settings.to_env(),
        "FEATREC_SOURCE": str(path),
        "FEATREC_REPLAY_SPEED": str(pace),
    }
    procs = start_flow("dataflows.sessions:flow()", env)
    echo(f"3/6 sessions dataflow started; following sessions {', '.join(watched)}")
    reader = FeastOnlineReader(open_store(settings))
    seen: dict[str, object] = {}
    try:
        while procs[0].poll() is None:
            _show_changes(reader.read(SESSION_FEATURES.name, watched), watched, seen, echo)
            time.sleep(0.25)
    finally:
        code = wait_all(procs)
    _show_changes(reader.read(SESSION_FEATURES.name, watched), watched, seen, echo)
    if code != 0:
        raise FeatrecError(f"the sessions dataflow exited with status {code}")
    echo("4/6 replay done. The same values through stock Feast, without featrec:")
    echo(
        "    from feast import FeatureStore\n"
        f"    FeatureStore(repo_path={str(settings.repo)!r}).get_online_features(\n"
        f"        features=['{SESSION_FEATURES.name}:n_events', "
        f"'{SESSION_FEATURES.name}:last_items'],\n"
        f"        entity_rows=[{{'session_id': {watched[0]!r}}}]).to_dict()"
    )
    echo("    featrec status   # counts, dead letters, last write")
    echo("5/6 training the ranker on the same events, as a user would (the live session uses it):")
    try:
        train_ranker(settings, path, lambda line: echo(f"    {line}"))
    except FeatrecError as exc:  # e.g. too few events to learn from: the demo goes on
        echo(
            f"    no ranker trained on {len(events):,} events ({exc}); the live session ranks "
            "by candidate order (more --events give it something to learn)"
        )
    run_live_session(settings, events, echo)


def _pick_sessions(events: list[Event], n: int) -> list[str]:
    """The busiest sessions among those that start in the first third of the replay."""
    cutoff = events[len(events) // 3].ts
    first_seen: dict[str, Event] = {}
    counts: Counter[str] = Counter()
    for e in events:
        first_seen.setdefault(e.session_id, e)
        counts[e.session_id] += 1
    early = [s for s, e in first_seen.items() if e.ts <= cutoff]
    early.sort(key=lambda s: (-counts[s], s))
    return early[:n]


def _show_changes(
    rows: list[Mapping[str, object] | None],
    sessions: list[str],
    seen: dict[str, object],
    echo: Echo,
) -> None:
    for session, row in zip(sessions, rows, strict=True):
        if row is None or seen.get(session) == row.get("version"):
            continue
        seen[session] = row.get("version")
        last_items = row.get("last_items") or []
        assert isinstance(last_items, list)
        echo(
            f"    {time.strftime('%H:%M:%S')} session {session:<10} events={row.get('n_events')} "
            f"views={row.get('n_views')} clicks={row.get('n_clicks')} carts={row.get('n_carts')} "
            f"purchases={row.get('n_purchases')} cart_value={_num(row.get('cart_value'))} "
            f"last_items={last_items[:4]}"
        )


def _num(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)
