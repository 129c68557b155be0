"""Teachers plugged in by import path (`--teacher teachers_for_tests:Slow`), as users plug in their own.

They exist to make engine behaviour observable: how slow a unit is, which process labelled a sample,
how often a worker loaded its teacher.
"""

import os
import time

import numpy as np

from omnimill.labelers.base import Batch, Field, Teacher

LOADS = {"count": 0}


class Slow(Teacher):
    """Mean brightness per sample, slowly: SECONDS_PER_SAMPLE each, so a unit is in flight long enough to kill."""

    name = "slow"
    seconds_per_sample = float(os.environ.get("OMNIMILL_TEST_SLOW", "0.05"))

    def fields(self):
        return [Field("mean", (), "float32"), Field("pid", (), "int64")]

    def __call__(self, batch: Batch):
        time.sleep(self.seconds_per_sample * len(batch))
        return {"mean": batch.views.reshape(len(batch), -1).mean(1).astype(np.float32),
                "pid": np.full(len(batch), os.getpid(), np.int64)}


class LoadCounter(Teacher):
    """Records, per sample, the labelling process and how many times that process loaded this teacher."""

    name = "loadcounter"

    def fields(self):
        return [Field("pid", (), "int64"), Field("loads", (), "int32")]

    def load(self, device="cpu", dtype="float32"):
        LOADS["count"] += 1

    def __call__(self, batch: Batch):
        return {"pid": np.full(len(batch), os.getpid(), np.int64),
                "loads": np.full(len(batch), LOADS["count"], np.int32)}


class FailsOnDark(Teacher):
    """Raises for any batch holding a dark image: the engine must isolate the bad sample, not lose the batch."""

    name = "failsondark"

    def fields(self):
        return [Field("brightness", (), "float32")]

    def __call__(self, batch: Batch):
        means = batch.views.reshape(len(batch), -1).mean(1)
        if (means < 20).any():
            raise ValueError("too dark to label")
        return {"brightness": means.astype(np.float32)}


class TwiceBrightness(Teacher):
    """Reads FailsOnDark's output (declared in `requires`): the engine runs it after, and passes it in."""

    name = "twice"
    requires = ("failsondark",)

    def fields(self):
        return [Field("value", (), "float32")]

    def __call__(self, batch: Batch):
        return {"value": 2 * batch.upstream["failsondark"]["brightness"]}


class Flaky(Teacher):
    """Raises for the keys listed in the file OMNIMILL_TEST_FLAKY while that file exists: a transient
    failure (a CUDA or I/O hiccup) that the next run must retry."""

    name = "flaky"

    def fields(self):
        return [Field("mean", (), "float32")]

    def __call__(self, batch: Batch):
        path = os.environ.get("OMNIMILL_TEST_FLAKY", "")
        bad = set(open(path).read().split()) if path and os.path.exists(path) else set()
        if bad & set(batch.keys):
            raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")
        return {"mean": batch.views.reshape(len(batch), -1).mean(1).astype(np.float32)}


class Attempts(Teacher):
    """Fails its whole unit on a worker (outside per-sample isolation), noting each attempt in the file
    OMNIMILL_TEST_ATTEMPTS: how many times the engine tries a unit."""

    name = "attempts"

    def fields(self):
        try:
            from distributed import get_worker

            get_worker()
        except (ImportError, ValueError):
            return [Field("value", (), "float32")]  # the client, preparing the store
        with open(os.environ["OMNIMILL_TEST_ATTEMPTS"], "a") as f:
            f.write("attempt\n")
        raise RuntimeError("this unit always fails")

    def __call__(self, batch: Batch):
        return {"value": np.zeros(len(batch), np.float32)}


class NoLoad(Teacher):
    """Its checkpoint never loads (noting each try in OMNIMILL_TEST_ATTEMPTS): a wrong-input error."""

    name = "noload"

    def fields(self):
        return [Field("value", (), "float32")]

    def load(self, device="cpu", dtype="float32"):
        with open(os.environ["OMNIMILL_TEST_ATTEMPTS"], "a") as f:
            f.write("load\n")
        raise OSError("not a valid checkpoint: header too short")

    def __call__(self, batch: Batch):
        return {"value": np.zeros(len(batch), np.float32)}


class Loudness(Teacher):
    """Sees whole clips: RMS of each audio segment, of the span's waveform, the brightness of each frame as
    the rgb teacher stored it (upstream, per clip: (T, S, S, 3)) and how many subtitle cues the clip has."""

    name = "loudness"
    sees = "clips"
    requires = ("rgb",)

    def fields(self):
        return [Field("segment_rms", (self.segments,), "float32", kind="scalar"),
                Field("rms", (), "float32", kind="scalar"),
                Field("frame_brightness", (self.frames,), "float32", kind="scalar"),
                Field("cues", (), "int32", kind="count")]

    frames, segments = 8, 3

    def __call__(self, batch: Batch):
        clips = batch.clips
        return {"segment_rms": np.sqrt((clips["audio"] ** 2).mean(-1)).astype(np.float32),
                "rms": np.array([np.sqrt((w ** 2).mean()) if w.size else 0.0 for w in clips["waveforms"]], np.float32),
                "frame_brightness": batch.upstream["rgb"]["image"].mean(axis=(2, 3, 4)).astype(np.float32),
                "cues": np.array([len(c) for c in clips["subtitles"]], np.int32)}
