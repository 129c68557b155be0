"""The unit summary: what the commit markers of a part say, one small row per unit, so `status` (and a plan)
need not read and parse every marker.

    _runs/<part>/summary (n_units, 6) int32   columns COLUMNS; a row of zeros = not summarized

Why it stays true:
- Only the client that holds the store's lock writes it (`UnitStore.summarize`), from markers it has
  read: one writer, so it may be sharded (layout.once: 8192 units per inner chunk, 2^20 per object).
- It only ever claims a unit whose marker was committed when it was read. Markers are added by workers
  (the summary then under-counts: readers add the markers of units it does not have, see `UnitStore.tally`)
  and removed only through the store: `clear_markers` takes the units out of the summary FIRST, then
  clears their markers, so a kill between the two leaves a summary that under-claims, never over-claims;
  `new_part` (--force, a damaged part) deletes `_runs/<part>` with its summary.
- A committed marker is replaced when a later run retries its unit's retryable failures: units whose row
  holds retryable failures are read again by every summarize and status (few: a unit with a retryable
  failure), and whoever makes a committed unit again for another reason (tokenize, when the label unit
  changed) calls `UnitStore.unsummarize` first.
- A marker emptied by hand (outside omnimill) is the one case it over-claims: `verify` compares every
  summarized unit with its marker and repair takes such units out again.

Size: 6 x 4 bytes per unit. At a billion samples: 1e9 / 128 = 7.8M units -> 188 MB before compression
(mostly runs of equal numbers: zstd makes it a few MB); at unit_size 4096, 244k units -> 5.9 MB.
"""

from __future__ import annotations

import numpy as np

COLUMNS = ("committed", "ok", "failed", "skipped", "errors", "retryable")
COMMITTED, OK, FAILED, SKIPPED, ERRORS, RETRYABLE = range(len(COLUMNS))
NAME = "summary"


def retryable(error: dict) -> bool:
    """A recorded failure the next run tries again. A file that does not decode fails the same way every
    time: it is recorded once and left. Anything else (a teacher that raised, a read that failed) may be
    transient (CUDA, network), so it is retried. Markers of older runs lack the flag: decided by stage."""
    return bool(error.get("retryable", error.get("stage") != "decode"))


def row(marker: dict) -> list[int]:
    """One committed unit's row."""
    errors = marker.get("errors", [])
    return [1, int(marker.get("ok", 0)), int(marker.get("failed", 0)), int(marker.get("skipped", 0)),
            len(errors), sum(1 for e in errors if retryable(e))]


def empty(n_units: int) -> np.ndarray:
    return np.zeros((n_units, len(COLUMNS)), np.int32)
