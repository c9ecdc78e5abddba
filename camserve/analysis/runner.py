"""Concurrent requests with a bounded queue, and the retry policy.

Requests run on a thread pool so the model server sees several at once and can batch them; results
are handed to ``sink`` on the calling thread as they complete (so one thread writes the log), and at
most ``2 * concurrency`` items are queued ahead, so huge data sets do not pile up in memory.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from camserve.errors import CamserveError

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
MAX_BACKOFF_S = 30.0


def with_retries(call: Callable[[int], R], retries: int, backoff: float,
                 sleep: Callable[[float], None] = time.sleep) -> R:
    """``call(attempt)``, retried up to ``retries`` times on a retriable error (``exc.retriable``: 503,
    connection error, timeout, 507 worker died), waiting ``backoff * 2**attempt`` seconds (capped at
    30 s) in between.

    The attempt number lets the caller move to another server on a retry. Other errors are not
    retried: a 4xx will not change, and a 500 means the handler failed on this input.
    """
    for attempt in range(retries + 1):
        try:
            return call(attempt)
        except CamserveError as exc:
            if not exc.retriable or attempt == retries:
                raise
            delay = min(backoff * 2 ** attempt, MAX_BACKOFF_S)
            log.debug("attempt %d failed (%s); retrying in %.2f s", attempt + 1, exc, delay)
            sleep(delay)
    raise AssertionError("unreachable")


def run_pool(items: Iterable[T], work: Callable[[T], R], on_error: Callable[[T, Exception], R],
             sink: Callable[[R], None], concurrency: int) -> None:
    """Run ``work`` on every item with ``concurrency`` threads and pass each result to ``sink``.

    ``work`` should turn expected failures into results itself; anything it raises anyway becomes
    ``on_error(item, exc)``, so no item is ever dropped. ``KeyboardInterrupt`` (or an exception from
    ``sink``) cancels what has not started and propagates once the running requests return.
    """
    source = iter(items)
    pending: dict[Future[R], T] = {}
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="analyze") as pool:
        try:
            _fill(pool, source, work, pending, 2 * concurrency)
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    item = pending.pop(future)
                    try:
                        result = future.result()
                    except Exception as exc:  # a bug in work(): still account for the item
                        log.exception("unexpected error on %r", item)
                        result = on_error(item, exc)
                    sink(result)
                _fill(pool, source, work, pending, 2 * concurrency)
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _fill(pool: ThreadPoolExecutor, source: Iterator[T], work: Callable[[T], R],
          pending: dict[Future[R], T], limit: int) -> None:
    for item in itertools.islice(source, max(0, limit - len(pending))):
        pending[pool.submit(work, item)] = item
