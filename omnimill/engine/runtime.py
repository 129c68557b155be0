"""What every task shares on a Dask worker: a per-process cache, torch's share of the cores, glibc's heap
thresholds, and the worker's name. Used by the label and tokenize tasks alike."""

from __future__ import annotations

import os
import socket
import sys
import threading

_cache: dict = {}
_cache_lock = threading.Lock()


def cached(key, make):
    """Per-process cache: teachers, stores and the decode pool outlive a task, not the worker."""
    with _cache_lock:
        if key not in _cache:
            _cache[key] = make()
        return _cache[key]


def undo_dask_malloc_trim() -> bool:
    """Let glibc keep big freed blocks on the heap again.

    Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (to hand memory back to the OS).
    Setting it freezes glibc's mmap threshold at 128 KiB, so every activation tensor above that is
    a fresh mmap + page faults + munmap: DINOv2-S on CPU ran 35% slower in a worker than in a plain
    process (benchmarks/engine.py). Raise both thresholds to 32 MiB / 256 MiB, as glibc's dynamic
    threshold would have. Linux + glibc only; elsewhere a no-op.
    """
    import ctypes
    import ctypes.util

    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 256 << 20))
    except (OSError, AttributeError):
        return False


def torch_threads(given: int | None, workers_per_host: dict) -> int:
    """Dask's nanny starts workers with OMP_NUM_THREADS=1: give torch this worker's share of the cores.

    e.g. 16 cores, 4 workers on the host -> 4 threads each.
    """
    if given:
        return given
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    host = worker_address().split("://")[-1].rsplit(":", 1)[0]
    return max(1, cores // workers_per_host.get(host, 1))


def worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"local-{os.getpid()}"


def loaded(kind: str) -> int:
    """How many cached objects of a kind this process holds (tests check \"teachers load once per worker\")."""
    return sum(1 for k in _cache if k[0] == kind)


def unit_marker(task, **counts) -> dict:
    """What every commit marker says of its unit and where it ran; a job adds its counts (ok, failed, ...).
    `finished` is stamped when the marker is written, after the unit's chunks."""
    return {"unit": task.unit, "start": task.start, "stop": task.stop, **counts, "attempt": task.attempt,
            "worker": worker_address(), "host": socket.gethostname(), "pid": os.getpid()}
