"""Field kinds (labelers/fields.py): every built-in teacher declares them, and value modes, serializers and
audit pictures follow the declarations, not names; stores made before kinds still work as they did."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from omnimill.errors import UserError
from omnimill.labelers import schema
from omnimill.labelers.base import Field, Teacher
from omnimill.labelers.fields import BUILTIN_KINDS, KINDS, define_kind, guess_kind, kind_of, relative_of
from omnimill.labelers.registry import BUILTIN, available, stored_teacher, teacher_class
from omnimill.tokenize import values as V
from omnimill.tokenize.serialize import SERIALIZERS, serializer_for

LABELERS = Path(__file__).resolve().parent.parent / "omnimill" / "labelers"
S = 64


def test_every_field_of_every_builtin_teacher_declares_its_kind():
    """Read from the source: model teachers need checkpoints to be built, their Field(...) calls do not."""
    missing = []
    for path in sorted(LABELERS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Field":
                kind = next((k.value for k in node.keywords if k.arg == "kind"), None)
                if not (isinstance(kind, ast.Constant) and kind.value in BUILTIN_KINDS):
                    missing.append(f"{path.name}:{node.lineno}")
    assert not missing


def test_kinds_are_checked_and_recorded_in_provenance():
    with pytest.raises(ValueError, match="unknown field kind 'dense_map'"):
        Field("x", (S, S), "float32", kind="dense_map")
    with pytest.raises(ValueError, match="one of omnimill's"):
        define_kind("boxes", "my boxes")
    assert define_kind("test_ring", "(3,) a ring") == "test_ring" and "test_ring" in KINDS
    field = Field("ring", (3,), "float32", kind="test_ring", time=True)
    assert field.describe() == {"shape": [3], "dtype": "float32", "dense": False, "doc": "", "kind": "test_ring",
                                "time": True}
    assert "kind" not in Field("old", (), "int32").describe()  # undeclared: nothing recorded, guessed where needed
    depth = teacher_class("depth")
    assert depth.renderer == "depth" and depth.serializer is None


# ---------------------------------------------------------------- value modes
# Every built-in dense field (name, dtype, per-sample shape, kind, relative): the kind gives the same mode as
# the old rule from dtype, shape and name gave, and the same per-image standardisation.
BUILTIN_DENSE = [
    ("image", "uint8", (S, S, 3), "image", False), ("edges", "bool", (S, S), "binary", False),
    ("disparity", "float16", (S, S), "continuous", True), ("depth", "float16", (S, S), "continuous", True),
    ("normals", "float16", (S, S, 3), "unit_vectors", False), ("classes", "uint16", (S, S), "classes", False),
    ("instances", "uint16", (S, S), "instances", False), ("patches", "float16", (4, 4, 32), "embedding_grid", False),
    ("cls", "float32", (32,), "embedding", False),
]


@pytest.mark.parametrize("name, dtype, shape, kind, relative", BUILTIN_DENSE)
def test_modes_from_kinds_are_the_modes_names_gave(name, dtype, shape, kind, relative):
    spec = Field(name, shape, dtype, dense=True, kind=kind, relative=relative).describe()
    old = {k: v for k, v in spec.items() if k not in ("kind", "relative")}  # as a store made before kinds
    assert V.mode_of(name, spec) == V.mode_of(name, old) == V.infer_mode(name, dtype, shape)
    assert relative_of(name, spec) == relative_of(name, old) == relative
    x = np.random.default_rng(0).random((2, *shape)).astype(np.float32)
    if V.mode_of(name, spec) == "continuous" and len(shape) >= 2:
        assert V.fit("continuous", x, name, relative=relative_of(name, spec))["per_image"] == \
            V.fit("continuous", x, name)["per_image"]


def test_modes_follow_the_kind_not_the_name():
    """A teacher of one's own may call its fields anything: the kind decides."""
    normals_named = Field("normal_confidence", (S, S, 3), "float32", kind="continuous").describe()
    assert V.mode_of("normal_confidence", normals_named) == "continuous"  # the name alone said unit
    assert V.mode_of("surface", Field("surface", (S, S, 3), "float16", kind="unit_vectors").describe()) == "unit"
    depth = Field("depth", (S, S), "float32", kind="continuous").describe()  # metric, shared scale: not relative
    assert not relative_of("depth", depth)
    x = np.stack([np.full((8, 8), 1.0), np.full((8, 8), 100.0)]).astype(np.float32)
    assert not V.fit("continuous", x, "depth", relative=relative_of("depth", depth))["per_image"]
    assert V.fit("continuous", x, "heights", relative=True)["per_image"]
    assert V.infer_mode("mask", "uint8", (S, S), kind="binary") == "binary"  # uint8 would have been classes


def test_stores_without_kinds_get_the_old_guesses():
    assert kind_of("normals", {"shape": [S, S, 3], "dtype": "float16"}) == "unit_vectors"
    assert kind_of("x", {"shape": [S, S, 3], "dtype": "uint8"}) == "image"
    assert kind_of("x", {"shape": [S, S, 3], "dtype": "uint8", "kind": "palette"}) == "palette"
    assert [guess_kind("e", "bool", (S, S)), guess_kind("c", "int32", (S, S)), guess_kind("v", "float32", (8,)),
            guess_kind("t", "str", ())] == ["binary", "classes", "embedding", "text"]


# ---------------------------------------------------------------- serializers and pictures by declaration
def test_serializers_are_the_teachers_declarations():
    declared = {name: teacher_class(name).serializer for name in available()}
    assert {n: s for n, s in declared.items() if s} == {"palette": "palette", "metadata": "metadata",
                                                      "detection": "detection", "sam": "sam", "pose": "pose",
                                                      "captioner": "caption"}
    assert all(s in SERIALIZERS for s in declared.values() if s)
    assert serializer_for("anything", {}, {"spec": "pose=/models/vitpose"}) is SERIALIZERS["pose"]


class Own(Teacher):
    """A teacher of this test module's own (imported, so trusted), with its own serializer and picture."""

    name = "own"
    serializer = SERIALIZERS["palette"]
    renderer = staticmethod(lambda teacher, fields, sample: [])


def test_a_teacher_brings_its_own_serializer_and_picture():
    from omnimill.audit.render import by_kind, renderer_for

    spec = f"{__name__}:Own"
    assert stored_teacher("own", {"spec": spec}) is Own
    assert serializer_for("own", {}, {"spec": spec}) is SERIALIZERS["palette"]
    assert renderer_for("own", {"spec": spec}) is Own.renderer
    assert renderer_for("toy", {}) is by_kind  # no class to ask: by kind and shape
    assert stored_teacher("x", {"spec": "nowhere_such_module:Teacher"}) is None  # not imported: not trusted
    with pytest.raises(UserError, match="structure = palette"):
        serializer_for("x", {}, {"spec": "depth"})


def test_pictures_are_declared_and_keep_their_order():
    from omnimill.audit.render import ORDER, RENDERERS

    assert ORDER == ("rgb", "canny", "sam", "depth", "normals", "semseg", "detection", "pose", "dinov2", "clip",
                     "imagebind", "palette", "captioner", "caption_embed", "captioner_embed", "t5_embed", "metadata")
    pictured = [name for name in BUILTIN if teacher_class(name).sees == "frames"]  # clip teachers: the clip panel
    assert set(ORDER) == set(pictured)
    assert {name: teacher_class(name).renderer for name in pictured} == {name: name for name in pictured}
    assert all(teacher_class(name).renderer in RENDERERS for name in pictured)


def test_kind_tiles_for_a_teacher_without_a_picture():
    from omnimill.audit.render import Sample, by_kind

    fields = {"mask": np.eye(8, dtype=bool), "surface": np.ones((8, 8, 3), np.float16),
              "ids": np.arange(64, dtype=np.int32).reshape(8, 8), "plain": np.ones((8, 8), np.float32), "n": 3}
    specs = {"mask": Field("mask", (8, 8), "bool", kind="binary"), "surface": Field("surface", (8, 8, 3), "float16",
             kind="unit_vectors"), "ids": Field("ids", (8, 8), "int32", kind="instances"),
             "plain": Field("plain", (8, 8), "float32"), "n": Field("n", (), "int32", kind="count")}
    sample = Sample("k", 0, 8, {"fields": {n: f.describe() for n, f in specs.items()}})
    titles = [t.title for t in by_kind("mine", fields, sample)]
    assert titles[:3] == ["mine/mask · 12.5% of pixels", "mine/surface · RGB = (n + 1) / 2", "mine/ids · 64 ids"]
    assert titles[3].startswith("mine/plain · 8×8 float32") and titles[4] == "mine"  # by shape; scalars last


def test_schema_facts_live_once():
    from omnimill.audit import render
    from omnimill.tokenize import serialize

    assert render.COCO_SKELETON is schema.COCO_SKELETON and render.MIN_KEYPOINT_SCORE == schema.KEYPOINT_THRESHOLD
    assert serialize.COCO_KEYPOINTS is schema.COCO_KEYPOINTS and serialize.KEYPOINT_THRESHOLD is \
        schema.KEYPOINT_THRESHOLD
