"""tests/hmr_plugin: an out-of-tree teacher with HMR2.0's fields (SMPL rotations, shape, camera, box) from a
stand-in model saved as safetensors, labelled through the engine after a tiny real detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import jpeg_bytes
from omnimill.corpus.image import decode_view
from omnimill.errors import UserError
from omnimill.labelers.base import Batch, TeacherSpec
from omnimill.labelers.registry import build
from test_detection import tiny_detector

from hmr_plugin import standin
from hmr_plugin.teacher import CAMERA, MAX_PEOPLE, ROTATIONS

TEACHER = "hmr_plugin.teacher:HMR2"
S = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return standin.save(standin.StandIn(), tmp_path_factory.mktemp("ckpt") / "hmr2-standin")


def hmr2(path, **options):
    teacher = build(TeacherSpec(TEACHER, str(path), options), S)
    teacher.load("cpu", "float32")
    return teacher


def assert_rotations(r: np.ndarray):
    """Every (3, 3) in r is a rotation: orthonormal, determinant +1."""
    r = r.reshape(-1, 3, 3).astype(np.float64)
    np.testing.assert_allclose(r @ r.transpose(0, 2, 1), np.broadcast_to(np.eye(3), r.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-5)


def detections(rows: list[list[tuple]], k: int = 10) -> dict:
    """A detection teacher's output from (class, score, x0, y0, x1, y1) per image, best first; person = 0."""
    n = len(rows)
    out = {"boxes": np.zeros((n, k, 4), np.float32), "classes": np.full((n, k), -1, np.int32),
           "scores": np.zeros((n, k), np.float32), "count": np.array([len(r) for r in rows], np.int32),
           "person_class": np.zeros(n, np.int32)}
    for i, row in enumerate(rows):
        for j, (cls, score, *box) in enumerate(row):
            out["boxes"][i, j], out["classes"][i, j], out["scores"][i, j] = box, cls, score
    return out


def test_6d_becomes_a_rotation():
    r = standin.rotation_from_6d(torch.randn(1000, 6, dtype=torch.float64))
    assert r.shape == (1000, 3, 3)
    assert_rotations(r.numpy())


def test_checkpoint_round_trip_and_refusals(checkpoint, tmp_path):
    model = standin.load(checkpoint)
    crops = torch.randn(2, 3, 32, 24)
    again = standin.load(checkpoint)(crops)
    for name, value in model(crops).items():
        torch.testing.assert_close(value, again[name])
    with pytest.raises(UserError, match="needs its checkpoint directory"):
        build(TeacherSpec(TEACHER), S)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="holds no config.json and model.safetensors"):
        build(TeacherSpec(TEACHER, str(empty)), S)


def test_fields_and_people(checkpoint):
    teacher = hmr2(checkpoint)
    assert [(f.name, f.shape, f.kind) for f in teacher.fields()] == [
        ("boxes", (7, 4), "boxes"), ("scores", (7,), "scores"), ("global_orient", (7, 3, 3), ROTATIONS),
        ("body_pose", (7, 23, 3, 3), ROTATIONS), ("betas", (7, 10), "embedding"), ("camera", (7, 3), CAMERA),
        ("count", (), "count")]
    assert teacher.requires == ("detection",) and MAX_PEOPLE == 7
    views = np.stack([decode_view(jpeg_bytes(i), S).view for i in range(3)])
    det = detections([[(0, 0.9, 10, 10, 30, 50), (1, 0.8, 0, 0, 64, 64), (0, 0.7, 30, 5, 60, 60)], [],
                      [(2, 0.9, 1, 1, 20, 20)]])
    out = teacher(Batch(views, [None] * 3, ["a", "b", "c"], {"detection": det}))
    assert out["count"].tolist() == [2, 0, 0]  # the car and the dog are no people
    np.testing.assert_array_equal(out["boxes"][0, :2], [[10, 10, 30, 50], [30, 5, 60, 60]])
    np.testing.assert_allclose(out["scores"][0, :2], [0.9, 0.7])
    assert_rotations(out["global_orient"][0, :2])
    assert_rotations(out["body_pose"][0, :2])
    for name, value in out.items():  # rows past count are padding
        if name != "count":
            assert not value[0, 2:].any() and not value[1:].any(), name
    # each person's row is the model on that person alone
    alone = teacher(Batch(views[:1], [None], ["a"], {"detection": detections([[(0, 0.7, 30, 5, 60, 60)]])}))
    for name in ("global_orient", "body_pose", "betas", "camera"):
        np.testing.assert_allclose(out[name][0, 1], alone[name][0, 0], atol=1e-5, err_msg=name)


def test_hmr_plugin_through_the_engine(corpus, checkpoint, tmp_path):
    from omnimill.engine.job import EXIT_OK
    from omnimill.engine.label import label
    from omnimill.store.labels import LabelStore

    detector = tiny_detector(tmp_path / "detector", person_bias=4.0)  # every one of its 10 queries is a person
    store = str(tmp_path / "labels.zarr")
    specs = [f"{TEACHER}={checkpoint}", f"detection={detector}"]  # the engine runs detection first
    assert label(str(corpus), store, specs, workers=1, unit_size=8, view_size=S, progress=False).exit_code == EXIT_OK

    labels = LabelStore.open(store)
    assert labels.ok("hmr2").all() and labels.ok("detection").all()
    fields = labels.provenance("hmr2")["fields"]
    assert fields["body_pose"]["kind"] == ROTATIONS and fields["camera"]["kind"] == CAMERA
    out, det = labels.outputs("hmr2"), labels.outputs("detection")
    assert out["body_pose"].shape == (20, 7, 23, 3, 3) and out["global_orient"].shape == (20, 7, 3, 3)
    assert out["betas"].shape == (20, 7, 10) and out["camera"].shape == (20, 7, 3) and out["boxes"].shape == (20, 7, 4)
    assert (out["count"] == 7).all()  # 10 people found, the 7 best kept
    np.testing.assert_array_equal(out["boxes"], det["boxes"][:, :7])
    assert_rotations(out["body_pose"])
    assert_rotations(out["global_orient"])

    # what the engine stored is what the teacher gives on the same views and detections
    views = np.stack([decode_view(open(p, "rb").read(), S).view for p in sorted(corpus.rglob("*.jpg"))])
    keys = list(labels.keys())
    rows = [keys.index(f"{p.parent.name}/{p.stem}") for p in sorted(corpus.rglob("*.jpg"))]
    direct = hmr2(checkpoint)(Batch(views, [None] * 20, keys, {"detection": {k: v[rows] for k, v in det.items()}}))
    for name, value in direct.items():
        np.testing.assert_allclose(out[name][rows], value, atol=1e-4, err_msg=name)
