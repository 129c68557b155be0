"""omnimill/engine/worker.py and runtime.py: one unit on a worker, run in this process (no Dask).

The worker decodes the first batches while its teachers load, reports where a unit's time went, and a
teacher that does not load stops the unit without leaving queued decodes behind."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from conftest import photo
from omnimill.corpus.image import ImageKind
from omnimill.corpus.kinds import register, unregister
from omnimill.corpus.listing import index_corpus
from omnimill.engine.worker import UnitTask, run_unit
from omnimill.labelers.base import Batch, Field, Teacher, TeacherSpec
from omnimill.labelers.registry import build
from omnimill.store.labels import LabelStore

SIDE = 32
DECODED = threading.Event()  # set by the kind below when it has decoded a sample
SEEN: dict = {}


class SignallingImages(ImageKind):
    """Images that say when one has been decoded."""

    name = "signalling-image"

    def decode(self, data, sample, settings):
        decoded = super().decode(data, sample, settings)
        DECODED.set()
        return decoded


class WaitsForDecode(Teacher):
    """Loads only once a sample is decoded (20 s at most), and notes whether one was: a worker that loaded
    its teachers before decoding anything makes it wait the whole 20 s and note False."""

    name = "waitsfordecode"

    def fields(self):
        return [Field("mean", (), "float32")]

    def load(self, device="cpu", dtype="float32"):
        SEEN["decoded_before_load"] = DECODED.wait(20)

    def __call__(self, batch: Batch):
        return {"mean": batch.views.reshape(len(batch), -1).mean(1).astype(np.float32)}


class FailsToLoad(Teacher):
    name = "failstoload"

    def fields(self):
        return [Field("mean", (), "float32")]

    def load(self, device="cpu", dtype="float32"):
        raise ValueError("no such checkpoint")


@pytest.fixture
def signalling():
    kind = register(SignallingImages())
    DECODED.clear()
    SEEN.clear()
    try:
        yield kind
    finally:
        unregister(kind.name)


def store_of(tmp_path, kind: str, n: int = 6, unit_size: int = 6) -> LabelStore:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(n):
        Image.fromarray(photo(i, 64, 48)).save(folder / f"img{i}.jpg")
    return LabelStore.create(str(tmp_path / "labels.zarr"), index_corpus(str(folder), sample_kind=kind), SIDE,
                             unit_size)


def prepared(store: LabelStore, *specs: TeacherSpec) -> list[TeacherSpec]:
    for spec in specs:
        teacher = build(spec, SIDE)
        store.prepare_teacher(teacher.name, teacher.fields(), teacher.provenance())
    return list(specs)


def task(store: LabelStore, specs, unit: int = 0, **options) -> UnitTask:
    plan = store.unit(unit)
    return UnitTask(store.uri, unit, plan.start, plan.stop, specs, SIDE, batch_size=2, device="cpu",
                    dtype="float32", sync_commit=True, **options)


def test_decoding_starts_while_the_teachers_load(tmp_path, signalling):
    store = store_of(tmp_path, signalling.name)
    specs = prepared(store, TeacherSpec("test_engine_worker:WaitsForDecode"), TeacherSpec("rgb"))
    stats = run_unit(task(store, specs, decode_threads=3))  # a pool of its own: a fresh thread, this kind
    assert SEEN["decoded_before_load"] is True
    assert stats["n"] == 6 and stats["failed"] == {"waitsfordecode": 0, "rgb": 0}
    assert stats["load_seconds"] > 0 and stats["decode_seconds"] > 0 and stats["commit_seconds"] > 0
    labels = LabelStore.open(store.uri)
    views = labels.outputs("rgb", slice(0, 6))["image"]
    np.testing.assert_allclose(labels.outputs("waitsfordecode", slice(0, 6))["mean"],
                               views.reshape(6, -1).mean(1), rtol=1e-5)
    assert labels.markers("waitsfordecode")[0]["ok"] == 6


def test_a_teacher_that_does_not_load_stops_the_unit_and_leaves_the_decode_pool_usable(tmp_path):
    store = store_of(tmp_path, "image", n=8, unit_size=4)
    bad = prepared(store, TeacherSpec("test_engine_worker:FailsToLoad"))
    stats = run_unit(task(store, bad, decode_threads=1))
    assert "could not be loaded" in stats["fatal"] and "no such checkpoint" in stats["fatal"]
    assert LabelStore.open(store.uri).markers("failstoload") == [None, None]  # nothing committed
    good = prepared(store, TeacherSpec("rgb"))
    stats = run_unit(task(store, good, unit=1, decode_threads=1))  # the same pool: queued decodes were dropped
    assert stats["failed"] == {"rgb": 0} and LabelStore.open(store.uri).markers("rgb")[1]["ok"] == 4
