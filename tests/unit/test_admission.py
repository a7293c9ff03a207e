"""Deadline admission: the queue is bounded by the deadline at the measured cost per request."""

from __future__ import annotations

import pytest

from featrec.app.serving.admission import Admission
from featrec.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_requests_are_admitted_while_the_work_ahead_fits_the_deadline() -> None:
    admission = Admission(deadline_s=0.050, service_s=0.010, smoothing=0.0, clock=Clock())
    admitted = [admission.arrive() for _ in range(8)]
    assert admitted == [True] * 5 + [False] * 3  # 5 x 10 ms fit in 50 ms


def test_a_lone_request_is_always_tried_even_when_slower_than_the_deadline() -> None:
    clock = Clock()
    admission = Admission(deadline_s=0.010, service_s=0.100, clock=clock)
    assert admission.arrive() and admission.start(0.0)
    admission.done(0.100)
    assert admission.arrive()


def test_a_request_that_waited_past_its_deadline_is_not_computed() -> None:
    clock = Clock()
    admission = Admission(deadline_s=0.050, service_s=0.010, smoothing=0.0, clock=clock)
    assert admission.arrive() and admission.arrive()  # two in the worker: one queues
    clock.now = 0.030
    assert admission.start(0.0)  # 30 ms waited + 10 ms to compute: in time
    clock.now = 0.045
    assert not admission.start(0.0)  # 45 + 10 > 50


def test_a_lone_request_is_computed_however_long_its_hop_to_the_worker_took() -> None:
    clock = Clock()
    admission = Admission(deadline_s=0.010, service_s=0.015, smoothing=0.0, clock=clock)
    assert admission.arrive()
    clock.now = 0.004  # a loaded machine: the hop to the worker thread took 4 ms
    assert admission.start(0.0)
    admission.done(0.015)
    assert admission.arrive()
    admission.arrive()  # a second request in the worker (shed at the door, or let in)
    assert not admission.start(0.0)  # 4 ms waited + 15 ms > 10 ms: now it is shed


def test_the_cost_follows_the_measurements_and_retry_after_is_whole_seconds() -> None:
    admission = Admission(deadline_s=0.050, service_s=0.001, smoothing=0.5, clock=Clock())
    admission.arrive()
    admission.done(0.021)
    assert admission.service_s == pytest.approx(0.011)
    assert admission.waiting == 0 and admission.retry_after_s() == 1


def test_a_bad_deadline_is_refused() -> None:
    with pytest.raises(ConfigError, match="deadline"):
        Admission(deadline_s=0.0)
