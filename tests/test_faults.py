"""A model worker killed in the middle of a burst: nothing hangs, the errors say what happened, and the
server answers again once TorchServe has restarted the worker."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from camserve.errors import CamserveError, ServerUnavailable, WorkerDied
from camserve.schema import ExplainResponse
from tests.corpus import GOOD

TIMEOUT = 30.0
SLACK = 5.0  # requests' timeout bounds each wait for bytes, not the whole exchange: connect + read + decode


@pytest.mark.integration
def test_a_killed_worker_costs_at_most_its_batch_and_the_server_recovers(server: Any) -> None:
    client = server.client(timeout=TIMEOUT)
    victim = server.ready_worker_pid("tiny")
    assert victim is not None

    killed_at: list[float] = []
    recovery: list[float] = []

    def one(i: int) -> tuple[float, float, ExplainResponse | CamserveError]:
        start = time.monotonic()
        try:
            result: ExplainResponse | CamserveError = client.explain("tiny", GOOD, label="Normal")
        except CamserveError as exc:
            result = exc
        took, end = time.monotonic() - start, time.monotonic()
        if i == 6:
            os.kill(victim, signal.SIGKILL)
            killed_at.append(time.monotonic())
            while server.ready_worker_pid("tiny") in (None, victim) and time.monotonic() - killed_at[0] < 120:
                time.sleep(0.1)
            recovery.append(time.monotonic() - killed_at[0])
        return took, end, result

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(one, range(40)))
    failed = [r for _, _, r in outcomes if isinstance(r, CamserveError)]
    assert all(isinstance(r, (WorkerDied, ServerUnavailable)) and r.retriable for r in failed), failed
    assert all(took < TIMEOUT + SLACK for took, _, _ in outcomes), "no request hangs past its timeout"
    answered_after_kill = [end for _, end, r in outcomes if isinstance(r, ExplainResponse) and end > killed_at[0]]
    assert answered_after_kill, "requests after the crash are answered"

    assert server.ready_worker_pid("tiny") not in (None, victim), "TorchServe restarted the worker"
    answer = client.explain("tiny", GOOD, label="Normal")
    assert answer.error is not None and answer.error.true_label == "Normal"
    print(f"\nworker kill: {len(failed)} of {len(outcomes)} requests failed "
          f"({', '.join(sorted({type(r).__name__ for r in failed}))}); a new worker was READY "
          f"{recovery[0]:.1f} s after the kill")
