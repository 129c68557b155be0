"""Fault points: where a kill would hurt, a test can kill. Off unless OMNIMILL_FAULT names the point.

    OMNIMILL_FAULT=unit.chunks OMNIMILL_FAULT_ONCE=/tmp/fired omnimill label ...

`point("unit.chunks")` then ends the process at once (os._exit, as SIGKILL would: no cleanup, no
finally) the first time any process reaches it; the file OMNIMILL_FAULT_ONCE records that it fired, so
the same command run again goes through. The fault-injection tests (tests/test_trust.py) kill every
job at each of its commit points this way and check that a rerun gives a clean run's store.
"""

from __future__ import annotations

import os

POINTS = (
    "store.create",  # a store's arrays written, its `format` not yet
    "unit.chunks",  # a unit's chunks written, its marker not yet
    "unit.marker",  # a unit's marker written (the next unit not started)
    "run.record",  # every unit done, the run record not yet written, the lock still held
)


def point(name: str) -> None:
    if os.environ.get("OMNIMILL_FAULT") != name:
        return
    once = os.environ.get("OMNIMILL_FAULT_ONCE")
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
    os._exit(137)
