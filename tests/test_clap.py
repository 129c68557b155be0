"""omnimill/labelers/clap.py: tiny real CLAP checkpoints (unfused and fused HTSAT, random weights, offline
tokenizer), loaded back through the teacher and compared with ClapModel's own calls on the same audio."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.signal import resample_poly

from omnimill.corpus.image import ImageInfo
from omnimill.errors import UserError
from omnimill.labelers.base import Batch, TeacherSpec
from omnimill.labelers.registry import build
from test_caption import tiny_bert_tokenizer

CLAP = "omnimill.labelers.clap:CLAP"
RATE = 16_000  # the clip kind's audio rate
T, S = 2, 16  # frames per clip and view size of the test batches (audio teachers do not read them)


def tone(seconds: float, hz: float = 440.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t) * np.linspace(0.2, 1, t.size)).astype(np.float32)


def clip_batch(waveforms: list[np.ndarray | None], captions: list[str] | None = None) -> Batch:
    """A Batch of clips as the engine gives a teacher that sees clips; None = a clip without audio."""
    n = len(waveforms)
    captions = captions or [""] * n
    has_audio = np.array([w is not None for w in waveforms])
    waves = [w if w is not None else np.zeros(RATE, np.float32) for w in waveforms]  # decode_clip's zeros
    info = [ImageInfo(S, S, "RGB", "h264", 0, False, (0, 0, S, S), c) for c in captions]
    clips = {"frames": np.zeros((n, T, S, S, 3), np.uint8), "frame_times": np.zeros((n, T)),
             "spans": np.array([[0.0, len(w) / RATE] for w in waves]), "audio": np.zeros((n, 3, RATE // 2), np.float32),
             "audio_spans": np.zeros((n, 3, 2)), "waveforms": waves, "has_video": np.ones(n, bool),
             "has_audio": has_audio, "subtitles": [[] for _ in range(n)], "captions": np.array(captions, dtype=object)}
    return Batch(clips["frames"], info, [f"v{i}/clip_0000" for i in range(n)], clips=clips)


def save_tiny_clap(path, fused: bool):
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    tokenizer = tiny_bert_tokenizer(path)
    small = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)
    config = ClapConfig(
        text_config=dict(vocab_size=len(tokenizer), num_hidden_layers=1, max_position_embeddings=20,
                         pad_token_id=tokenizer.pad_token_id, **small),
        audio_config=dict(depths=[1, 1], num_attention_heads=[2, 2], patch_embeds_hidden_size=16, hidden_size=32,
                          projection_hidden_size=32, enable_fusion=fused),
        projection_dim=24)
    torch.manual_seed(0)
    ClapModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    # LAION's unfused checkpoints crop long audio at random ("rand_trunc"), the fused ones fuse ("fusion")
    ClapFeatureExtractor(truncation="fusion" if fused else "rand_trunc").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_clap(tmp_path_factory):
    return save_tiny_clap(tmp_path_factory.mktemp("ckpt") / "tiny-clap", fused=False)


@pytest.fixture(scope="module")
def tiny_clap_fused(tmp_path_factory):
    return save_tiny_clap(tmp_path_factory.mktemp("ckpt") / "tiny-clap-fused", fused=True)


def load(path):
    teacher = build(TeacherSpec(CLAP, str(path)), S)
    teacher.load("cpu", "float32")
    return teacher


def reference_audio(path, waveform: np.ndarray) -> np.ndarray:
    """ClapModel's own embedding of one 16 kHz waveform (resampled to 48 kHz), through its own extractor."""
    from transformers import ClapFeatureExtractor, ClapModel

    model = ClapModel.from_pretrained(path).eval()
    inputs = ClapFeatureExtractor.from_pretrained(path)(resample_poly(waveform, 3, 1), sampling_rate=48_000,
                                                        return_tensors="pt")
    with torch.inference_mode():
        return model.get_audio_features(**inputs).pooler_output[0].numpy()


def test_clap_fields_and_values_match_the_model(tiny_clap):
    from transformers import AutoTokenizer, ClapModel

    teacher = load(tiny_clap)
    assert teacher.sees == "clips" and teacher.provenance()["sees"] == "clips"
    assert {f.name: (f.shape, f.dtype, f.kind) for f in teacher.fields()} == {
        "embedding": ((24,), "float32", "embedding"), "has_audio": ((), "bool", "scalar"),
        "text_embedding": ((24,), "float32", "embedding"), "has_text": ((), "bool", "scalar")}
    long = tone(13.0, 660.0)  # two windows: 0..10 s and 10..13 s
    batch = clip_batch([tone(3.0), None, long], ["a dog on the grass", "a cat", ""])
    out = teacher(batch)
    for f in teacher.fields():
        assert out[f.name].shape == (3, *f.shape) and out[f.name].dtype == np.dtype(f.dtype)

    assert out["has_audio"].tolist() == [True, False, True]
    np.testing.assert_allclose(out["embedding"][0], reference_audio(tiny_clap, tone(3.0)), atol=1e-5)
    assert not out["embedding"][1].any()  # no audio: zeros, not a failure
    halves = [reference_audio(tiny_clap, long[:10 * RATE]), reference_audio(tiny_clap, long[10 * RATE:])]
    mean = np.mean(halves, axis=0)
    np.testing.assert_allclose(out["embedding"][2], mean / np.linalg.norm(mean), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["embedding"][[0, 2]], axis=1), 1, atol=1e-5)

    model = ClapModel.from_pretrained(tiny_clap).eval()
    tokens = AutoTokenizer.from_pretrained(tiny_clap)(["a dog on the grass", "a cat"], padding=True,
                                                      return_tensors="pt")
    with torch.inference_mode():
        text = model.get_text_features(**tokens).pooler_output.numpy()
    assert out["has_text"].tolist() == [True, True, False]
    np.testing.assert_allclose(out["text_embedding"][:2], text, atol=1e-5)
    assert not out["text_embedding"][2].any()
    np.testing.assert_allclose(teacher.embed_text(["a cat"]), text[1:], atol=1e-5)  # the auditor's query side
    assert teacher.embed_text([]).shape == (0, 24)


def test_clap_labels_are_the_same_every_time_even_fused(tiny_clap_fused):
    teacher = load(tiny_clap_fused)
    waves = [tone(4.0), tone(2.0, 220.0)]
    first = teacher(clip_batch(waves))["embedding"]
    again = teacher(clip_batch(waves[::-1]))["embedding"][::-1]  # other batch order: the same per clip
    np.testing.assert_allclose(first, again, atol=1e-6)
    np.testing.assert_allclose(first[0], reference_audio(tiny_clap_fused, tone(4.0)), atol=1e-5)
    config = teacher.provenance()["config"]
    assert config["truncation"] == "fusion" and config["window_seconds"] == 10.0 and config["sampling_rate"] == 48000


def test_clap_refuses_a_checkpoint_without_its_feature_extractor_or_of_another_model(tiny_clap, tmp_path):
    import shutil

    bare = tmp_path / "no-extractor"
    shutil.copytree(tiny_clap, bare)
    (bare / "preprocessor_config.json").unlink()
    with pytest.raises(UserError, match="no preprocessor_config.json"):
        build(TeacherSpec(CLAP, str(bare)), S)
    from transformers import ViTConfig

    other = tmp_path / "vit"
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(other)
    with pytest.raises(UserError, match="model_type is 'vit', expected clap"):
        build(TeacherSpec(CLAP, str(other)), S)
