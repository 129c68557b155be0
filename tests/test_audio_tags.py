"""omnimill/labelers/audio_tags.py: a tiny real AST checkpoint (random weights) with its feature extractor,
loaded back through the teacher and compared with ASTForAudioClassification's own call on the same audio."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnimill.errors import UserError
from omnimill.labelers.base import TeacherSpec
from omnimill.labelers.registry import build
from test_clap import RATE, S, clip_batch, tone

# AST's real extractor setting (128 mel bins over a 400-point FFT) makes transformers warn whenever one is built
pytestmark = pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")
TAGS = "omnimill.labelers.audio_tags:AudioTags"
NAMES = ["Speech", "Music", "Dog", "Rain", "Engine", "Bird", "Silence"]
FRAMES = 256  # the tiny model hears 2.56 s at once (AudioSet's AST: 1024 frames, 10.24 s)


def save_tiny_ast(path):
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    config = ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       max_length=FRAMES, id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)})
    torch.manual_seed(0)
    ASTForAudioClassification(config).save_pretrained(path)
    ASTFeatureExtractor(max_length=FRAMES).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_ast(tmp_path_factory):
    return save_tiny_ast(tmp_path_factory.mktemp("ckpt") / "tiny-ast")


def load(path, **options):
    teacher = build(TeacherSpec(TAGS, str(path), options), S)
    teacher.load("cpu", "float32")
    return teacher


def reference_scores(path, waveform: np.ndarray) -> np.ndarray:
    """ASTForAudioClassification's own sigmoid scores for one window, through its own extractor."""
    from transformers import ASTFeatureExtractor, ASTForAudioClassification

    model = ASTForAudioClassification.from_pretrained(path).eval()
    inputs = ASTFeatureExtractor.from_pretrained(path)(waveform, sampling_rate=RATE, return_tensors="pt")
    with torch.inference_mode():
        return model(**inputs).logits.sigmoid()[0].numpy()


def test_audio_tags_are_the_top_k_of_the_model_scores(tiny_ast):
    teacher = load(tiny_ast, top_k=3)
    assert {f.name: (f.shape, f.dtype, f.kind) for f in teacher.fields()} == {
        "ids": ((3,), "int32", "classes"), "scores": ((3,), "float32", "scores"), "count": ((), "int32", "count")}
    config = teacher.provenance()["config"]
    assert config["class_names"] == NAMES and config["activation"] == "sigmoid" and config["window_seconds"] == 2.56
    assert teacher.provenance()["sees"] == "clips"

    short, long = tone(2.0), tone(6.0, 1500.0)  # one window; three windows (2.56 + 2.56 + 0.88 s)
    out = teacher(clip_batch([short, None, long]))
    for f in teacher.fields():
        assert out[f.name].shape == (3, *f.shape) and out[f.name].dtype == np.dtype(f.dtype)
    assert out["count"].tolist() == [3, 0, 3]
    assert not out["ids"][1].any() and not out["scores"][1].any()  # no audio: count 0, not a failure

    ref = reference_scores(tiny_ast, short)
    assert out["ids"][0].tolist() == np.argsort(-ref)[:3].tolist()
    np.testing.assert_allclose(out["scores"][0], np.sort(ref)[::-1][:3], atol=1e-5)
    window = int(FRAMES / 100 * RATE)
    clip = np.max([reference_scores(tiny_ast, long[a:a + window]) for a in range(0, long.size, window)], axis=0)
    assert out["ids"][2].tolist() == np.argsort(-clip)[:3].tolist()
    np.testing.assert_allclose(out["scores"][2], np.sort(clip)[::-1][:3], atol=1e-5)


def test_audio_tags_options_are_checked(tiny_ast):
    with pytest.raises(UserError, match="top_k must be 1..7"):
        build(TeacherSpec(TAGS, str(tiny_ast), {"top_k": 9}), S)
    with pytest.raises(UserError, match="has no option 'k'"):
        build(TeacherSpec(TAGS, str(tiny_ast), {"k": 2}), S)
    assert load(tiny_ast).fields()[0].shape == (5,)  # the default top_k
