"""A teacher from outside omnimill (tests/plugin_teacher) with a field kind of its own, its own serializer and
its own picture, through every stage: label -> tokenizer train -> tokenize -> shards export -> train -> audit
show, with nothing of it in omnimill.

It is installed as a real plug-in is: an entry point in the group `omnimill.teachers` (a dist-info folder on
sys.path, which the Dask workers inherit), so that workers loading its tokenizer may import it.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import invoke, write_images
from omnimill.errors import UserError
from omnimill.store.labels import LabelStore

TEACHER = "plugin_teacher.spots:Spots"
TINY = ["dim=32", "encoder_layers=1", "decoder_layers=1", "heads=2", "batch_size=4", "num_workers=0",
        "input_tokens=12", "target_tokens=12", "shuffle_buffer=8", "holdout=0.25", "warmup_steps=2",
        "eval_batches=1", "log_every=2", "steps=4", "eval_every=4", "checkpoint_every=4"]


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The plug-in installed for omnimill: its entry point visible to this process and the workers it starts."""
    site = tmp_path / "site"
    info = site / "plugin_teacher-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-teacher\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[omnimill.teachers]\nspots = {TEACHER}\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def test_a_plugin_teacher_goes_from_label_to_audit_show(installed, tmp_path):
    from omnimill.audit.render import sample_tiles
    from omnimill.engine.label import label
    from omnimill.engine.tokenize import tokenize
    from omnimill.shards.wds import export_wds
    from omnimill.tokenize.base import load_tokenizer
    from omnimill.tokenize.train import train_tokenizer
    from omnimill.train.config import TrainConfig, apply_overrides
    from omnimill.train.loop import train

    corpus = tmp_path / "corpus"
    write_images(corpus, 16, size=(80, 64))
    labels = str(tmp_path / "labels.zarr")
    assert label(str(corpus), labels, ["rgb", TEACHER], workers=1, unit_size=4, view_size=64,
                 progress=False).exit_code == 0
    store = LabelStore.open(labels)
    fields = store.provenance("spots")["fields"]
    assert fields["spots"]["kind"] == "spots" and fields["count"]["kind"] == "count"
    assert store.provenance("rgb")["fields"]["image"]["kind"] == "image"

    # its serializer, found through the teacher the store's provenance names
    directory = train_tokenizer(labels, "spots", "sequence", tmp_path / "tok", progress=False, holdout=0.25,
                                tokens_per_sample=16)
    tok = load_tokenizer(directory)
    assert tok.config.options["structure"] == "spots" and tok.config.options["serializer_teacher"] == TEACHER
    values = store.outputs("spots", slice(0, 8))
    crops = np.tile(np.array([0, 0, 64, 64, 1], np.int32), (8, 1))  # flipped: x mirrors
    ids = tok.encode(values, crops)
    decoded, reference = tok.decode(ids), tok.quantize(values, crops)
    for name in ("spots", "count"):
        np.testing.assert_array_equal(decoded[name], reference[name])
    assert decoded["count"].sum() > 0

    tokens = str(tmp_path / "tokens.zarr")  # the workers load the tokenizer: the entry point lets them import it
    assert tokenize(labels, tokens, [str(directory)], n_crops=2, workers=1, progress=False).exit_code == 0
    shards = tmp_path / "shards"
    manifest = export_wds(tokens, str(shards), samples_per_shard=8)
    assert "spots" in manifest["modalities"]

    config = TrainConfig()
    apply_overrides(config, [f"datasets={shards}", *TINY])
    result = train(config, tmp_path / "run", progress=False)
    assert result["step"] == 4 and "spots" in result["heldout"]

    # audit show: its own picture, in the panel and in the CLI's PNG
    i = store.index_of("img0003")
    titles = [t.title for t in sample_tiles(store, i)]
    assert titles[0].startswith("rgb") and any(t.startswith("spots · ") and "bright spots" in t for t in titles)
    out = tmp_path / "show.png"
    shown = invoke("audit", "show", labels, "img0003", "--out", out)
    assert shown.exit_code == 0, shown.output
    assert out.stat().st_size > 1000


def test_a_store_cannot_make_omnimill_import_a_plugin(tmp_path):
    """Without the entry point and not imported, a plug-in a provenance names is not imported: the structure
    option is the way out, and the message says why."""
    from omnimill.labelers.registry import stored_teacher
    from omnimill.tokenize.serialize import serializer_for

    never = "plugin_teacher_never_imported.mod:Teacher"
    assert stored_teacher("x", {"spec": never}) is None
    with pytest.raises(UserError, match="neither installed for omnimill"):
        serializer_for("x", {}, {"spec": never})
    assert serializer_for("x", {"structure": "palette"}, {"spec": never}).name == "palette"
