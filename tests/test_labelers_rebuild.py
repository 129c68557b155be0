"""omnimill/labelers/rebuild.py: the teacher that labelled a store, rebuilt from the store's provenance (a tiny
real CLIP saved with save_pretrained, a real label store holding its provenance as the label job writes it)."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from test_clip import CLIP, load
from test_clip import tiny_clip  # noqa: F401  (a fixture: a tiny real CLIP checkpoint)

from omnimill.corpus.listing import CorpusIndex
from omnimill.errors import UserError
from omnimill.labelers.base import TeacherSpec
from omnimill.labelers.rebuild import rebuild_teacher, trusted_teacher
from omnimill.labelers.registry import build
from omnimill.store.labels import LabelStore


def store_of(tmp_path, checkpoint, name="s.zarr", **changes) -> LabelStore:
    """A label store whose clip group carries the provenance of the teacher built from `checkpoint`, with
    `changes` written over it."""
    teacher = build(TeacherSpec(CLIP, str(checkpoint)), 32)
    corpus = CorpusIndex("/photos", "folder")
    corpus.add("a", "/photos/a.jpg")
    store = LabelStore.create(str(tmp_path / name), corpus, 32, 4)
    provenance = json.loads(json.dumps({**teacher.provenance(), **changes}, default=str))
    store.prepare_teacher("clip", teacher.fields(), provenance)
    return LabelStore.open(str(tmp_path / name))


def test_the_rebuilt_teacher_embeds_as_the_one_that_labelled(tmp_path, tiny_clip):
    store = store_of(tmp_path, tiny_clip)
    assert trusted_teacher(store, "clip") == CLIP
    rebuilt = rebuild_teacher(store, "clip", "cpu")
    texts = ["a cat", "a dog on the grass"]
    np.testing.assert_allclose(rebuilt.embed_text(texts), load(tiny_clip, 32).embed_text(texts), atol=1e-5)


def test_a_changed_checkpoint_or_config_is_refused_with_the_callers_alternative(tmp_path, tiny_clip):
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_clip, copy)
    store = store_of(tmp_path, copy)
    weights = next(copy.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")  # a byte of the weights changed after labelling
    with pytest.raises(UserError, match=r"changed since the store was labelled \(sha256 differs\); drop it, or "
                                        "relabel"):
        rebuild_teacher(store, "clip", "cpu", instead="drop it")
    config = {**store.provenance("clip")["config"], "embed_dim": 99}
    other = store_of(tmp_path, tiny_clip, "other.zarr", config=config)
    with pytest.raises(UserError, match=r"differs from the one that labelled it \(embed_dim: 24 now, 99 in the "
                                        r"store\); query by --key instead"):
        rebuild_teacher(other, "clip", "cpu")


def test_a_module_the_store_names_is_not_imported_unless_the_user_names_it(tmp_path, tiny_clip):
    store = store_of(tmp_path, tiny_clip, spec="evil_module_xyz:Teacher=/x")
    with pytest.raises(UserError, match="'evil_module_xyz:Teacher', not a built-in teacher.*or drop it"):
        rebuild_teacher(store, "clip", "cpu", instead="drop it")
    with pytest.raises(UserError, match="does not match the teacher that labelled clip"):
        trusted_teacher(store, "clip", plugin="other_module:Teacher")
    assert trusted_teacher(store, "clip", plugin="evil_module_xyz:Teacher") == "evil_module_xyz:Teacher"
    assert "evil_module_xyz" not in sys.modules
