"""Threads for work that runs beside a request's own thread: the detail stage's redrawing during the main
flow's edit, half of the detector's image pyramid during the other half.

On a CPU the request's thread runs torch on one core (the service gives each edit that may run at once
its share of the cores); the second core is idle during those steps, and a side job fills it. One pool for
the process, shared by all the edits running at once. Each job runs under `torch.inference_mode` (grad
mode is a per-thread setting) with denormals flushed (a per-thread CPU setting, as the service sets for
its own threads)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import torch

SIDE_THREADS = 4  # for all the edits of the process together
T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def _forget_in_child() -> None:
    """A forked child has none of its parent's threads: its first side job starts a pool of its own (the
    parent's would take the job and never run it)."""
    global _pool, _lock
    _pool, _lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


def _pool_now() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=SIDE_THREADS,
                thread_name_prefix="side",
                initializer=torch.set_flush_denormal,
                initargs=(True,),
            )
        return _pool


def _inference(function: Callable[..., T], *args) -> T:
    with torch.inference_mode():
        return function(*args)


def beside(function: Callable[..., T], *args) -> Future[T]:
    """`function(*args)` started on a side thread, under inference mode; `.result()` waits for it."""
    return _pool_now().submit(_inference, function, *args)
