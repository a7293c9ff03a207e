"""The end of ``featrec demo``: one live session, event by event, with its recommendations.

Events arrive one at a time (a short walk through co-visited items), are folded with the
sessions dataflow's own fold and written by the writer its sink uses; after each one the
recommender answers for the session, with reasons. Then the events stop: the session
features age, and once they are older than the limit the answer falls back to long-term and
popularity signals and says so.

Time is event time on a replay clock (``pace`` x wall time from the end of the generated
traffic), so the demo's minutes of shop time pass in seconds.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from featrec.app.serving.recommender import Recommendation, ServingConfig
from featrec.core.events.model import CART, CLICK, VIEW, Event, event_from_mapping
from featrec.core.sessions.fold import fold, new_state, session_row
from featrec.jobs.serving import ServingOptions, open_recommender
from featrec.settings import Settings

Echo = Callable[[str], None]

SESSION_ID = "live-demo"
#: Event-time seconds after which the live session's features count as stale.
MAX_SESSION_AGE_S = 60.0


class ReplayClock:
    """Event time that runs ``pace`` times faster than the wall clock from ``start``."""

    def __init__(self, start: datetime, pace: float) -> None:
        self.start = start
        self.pace = pace
        self._wall0 = time.monotonic()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(time.monotonic() - self._wall0) * self.pace)

    def __call__(self) -> float:
        return self.now().timestamp()


def run_live_session(
    settings: Settings,
    events: Sequence[Event],
    echo: Echo,
    *,
    n_events: int = 8,
    pace: float = 10.0,
    k: int = 5,
    seed: int = 3,
) -> None:
    """Bootstrap item signals from ``events``, then play one live session (see above)."""
    from featrec.adapters.feast.writers import open_writer
    from featrec.jobs.item_signals import bootstrap_items

    signals = bootstrap_items(settings, events, "the demo's events").signals
    writer = open_writer(settings)
    try:
        echo(
            f"6/6 live session {SESSION_ID!r}: item signals bootstrapped from {len(events):,} "
            f"events ({len(signals.index.sketches):,} neighbour lists); shop time runs {pace:g}x"
        )
        clock = ReplayClock(events[-1].ts + timedelta(seconds=5), pace)
        config = ServingConfig(max_session_age_s=MAX_SESSION_AGE_S, item_cache_s=0.0)
        recommender = open_recommender(settings, ServingOptions(config=config), clock=clock)
        walk = _walk(events, signals.index.top, n_events, random.Random(seed))
        user = Counter(e.user_id for e in events if e.user_id).most_common(1)[0][0]
        state = new_state(SESSION_ID)
        policy = settings.session_policy
        shown: list[str] = []
        for n, (item, category, price, type_) in enumerate(walk, start=1):
            event = event_from_mapping(
                {
                    "event_id": f"{SESSION_ID}-{n}",
                    "session_id": SESSION_ID,
                    "user_id": user,
                    "item_id": item,
                    "type": type_,
                    "ts": clock.now().isoformat(),
                    **({"category": category} if category else {}),
                    **({"price": price} if price is not None else {}),
                }
            )
            fold(state, event, policy)
            writer.write([session_row(state)])
            answer = recommender.recommend(SESSION_ID, user, k)
            echo(
                f"    {event.ts:%H:%M:%S} {type_:<5} {item} ({category or '-'}): session version "
                f"{state.version}, scorer {answer.scorer}"
            )
            _show(answer, shown, echo)
            shown = [i.item_id for i in answer.items]
            time.sleep(random.Random(seed + n).uniform(6.0, 16.0) / pace)
        echo(
            f"    the session stream stops: no events for {SESSION_ID!r} from here on "
            f"(stale after {MAX_SESSION_AGE_S:g} s of shop time)"
        )
        for _ in range(30):
            time.sleep(10.0 / pace)
            answer = recommender.recommend(SESSION_ID, user, k)
            if answer.degraded:
                echo(f"    {clock.now():%H:%M:%S} DEGRADED: {answer.degraded_reason}")
                _show(answer, shown, echo)
                break
            echo(f"    {clock.now():%H:%M:%S} no new event; same answer (version cache)")
        recommender.log.close()
        echo(f"    explain any answer: featrec explain {answer.request_id}")
    finally:
        writer.close()


def _walk(
    events: Sequence[Event],
    neighbours: Callable[[str, int], list[tuple[str, float]]],
    n: int,
    rng: random.Random,
) -> list[tuple[str, str | None, float | None, str]]:
    """``n`` steps ``(item, category, price, type)``: from a popular item through co-visited
    ones, mostly views, a click now and then, a cart at the end."""
    known = {e.item_id: (e.category, e.price) for e in events}
    popular = [item for item, _ in Counter(e.item_id for e in events).most_common(20)]
    item = popular[0]
    steps: list[tuple[str, str | None, float | None, str]] = []
    for step in range(n):
        type_ = CART if step == n - 1 else (CLICK if step % 3 == 2 else VIEW)
        category, price = known.get(item, (None, None))
        steps.append((item, category, price, type_))
        options = [i for i, _ in neighbours(item, 5) if i != item] or popular
        item = rng.choice(options)
    return steps


def _show(answer: Recommendation, before: Sequence[str], echo: Echo) -> None:
    for entry in answer.items:
        if entry.item_id not in before:
            move = "new"
        else:
            delta = before.index(entry.item_id) + 1 - entry.rank
            move = "=" if delta == 0 else (f"+{delta}" if delta > 0 else str(delta))
        echo(
            f"        {entry.rank}. {entry.item_id:<12} {entry.score:7.3f} {move:>4}  "
            + "; ".join(entry.reasons)
        )
