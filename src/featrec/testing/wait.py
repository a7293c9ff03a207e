"""Waiting for something a background process or thread will do, with a deadline."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable


def wait_until(
    done: Callable[[], bool], timeout_s: float, proc: subprocess.Popen[bytes] | None = None
) -> bool:
    """Poll ``done`` every 0.2 s; False at the deadline (or if ``proc`` died)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done():
            return True
        if proc is not None and proc.poll() is not None:
            return done()
        time.sleep(0.2)
    return done()
