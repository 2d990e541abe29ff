"""Bounded inference: a few requests run at once, a few more wait, the rest are turned away at once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class ServerBusy(Exception):
    """Every slot is taken and the queue is full."""


class InferenceGate:
    """`slots` requests run at once and up to `queue` more wait; used from worker threads, never the event loop.
    `prepare`, if given, runs in the worker thread each time a request gets its slot, before it runs: for the
    settings of the thread that the model's arithmetic depends on."""

    def __init__(self, slots: int, queue: int, prepare: Callable[[], None] | None = None) -> None:
        self._prepare = prepare
        self._slots = threading.BoundedSemaphore(slots)
        self._capacity = slots + queue
        self._admitted = 0
        self._lock = threading.Lock()

    @property
    def admitted(self) -> int:
        """Requests running or waiting."""
        return self._admitted

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._lock:
            if self._admitted >= self._capacity:
                raise ServerBusy
            self._admitted += 1
        try:
            with self._slots:
                if self._prepare is not None:
                    self._prepare()
                yield
        finally:
            with self._lock:
                self._admitted -= 1
