"""``featrec demo --web``: the whole system on the embedded default, and the shop page.

It prepares a shop (:func:`featrec.jobs.storefront.prepare`: Feast repo, generated history,
event log, batch features materialized, item signals, training set, trained ranker), starts
both dataflows on the collector log and the HTTP server, prints the URL to open, and waits.
Ctrl-C (or SIGTERM) stops every process it started.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType

from featrec.errors import FeatrecError
from featrec.jobs.storefront import prepare, start, stop, wait_flowing, wait_ready
from featrec.settings import Settings

Echo = Callable[[str], None]
#: Events of generated history behind the demo shop.
HISTORY_EVENTS = 6_000


def run_web_demo(settings: Settings, *, port: int, echo: Echo) -> None:
    started = time.monotonic()
    prepare(settings, n_events=HISTORY_EVENTS, train=True, echo=lambda m: echo("  " + m))
    log = settings.home / "shop" / "processes.log"
    running = start(settings, port=port, log=log)

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        wait_ready(running)
        wait_flowing(running)
        echo(
            f"ready in {time.monotonic() - started:.0f} s: both dataflows tail the collector log, "
            f"the server uses the trained ranker (logs: {log})"
        )
        echo(f"open {running.url}   (Ctrl-C stops everything)")
        while True:
            for p in running.all:
                if p.poll() is not None:
                    raise FeatrecError(f"a process stopped (status {p.returncode}): see {log}")
            time.sleep(0.5)
    except KeyboardInterrupt:
        echo("stopping the flows and the server...")
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop(running)
    echo("stopped")
