"""omnimill/labelers/audio_captioner.py: a tiny real Whisper audio-captioning checkpoint (random weights,
an offline byte-level Whisper tokenizer with its task tokens), loaded back through the teacher and compared
with a greedy decode written here from WhisperForConditionalGeneration's own forward."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from omnimill.errors import UserError
from omnimill.labelers.base import TeacherSpec
from omnimill.labelers.registry import build
from test_clap import RATE, S, clip_batch, tone

# AST's real extractor setting (128 mel bins over a 400-point FFT) makes transformers warn whenever one is built
pytestmark = pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")
CAPTIONER = "omnimill.labelers.audio_captioner:AudioCaptioner"
SPECIAL = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
SUPPRESSED = [33, 34]  # byte symbols "B" and "C": the checkpoint's generation_config suppresses them


def tiny_whisper_tokenizer():
    """A real WhisperTokenizer (byte-level BPE over the 256 byte symbols, a few merges) with the task tokens."""
    from transformers import WhisperTokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    merges = [("Ġ", "c"), ("a", "p"), ("Ġc", "ap"), ("Ġ", "d"), ("o", "g")]
    vocab = symbols + ["".join(m) for m in merges] + SPECIAL
    tokenizer = WhisperTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL[1:]})
    return tokenizer


def save_tiny_captioner(path, architecture="WhisperForAudioCaptioning"):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    tokenizer = tiny_whisper_tokenizer()
    start, eos = tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|endoftext|>"])
    config = WhisperConfig(vocab_size=len(tokenizer), num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, max_source_positions=1500, max_target_positions=48,
                           decoder_start_token_id=start, eos_token_id=eos, pad_token_id=eos, bos_token_id=eos)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config.suppress_tokens = SUPPRESSED
    model.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())  # save_pretrained writes its own class's name
    (path / "config.json").write_text(json.dumps({**config, "architectures": [architecture]}))
    tokenizer.save_pretrained(path)
    WhisperFeatureExtractor().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_captioner(tmp_path_factory):
    return save_tiny_captioner(tmp_path_factory.mktemp("ckpt") / "tiny-whisper-audio-captioning")


def load(path, **options):
    teacher = build(TeacherSpec(CAPTIONER, str(path), options), S)
    teacher.load("cpu", "float32")
    return teacher


def reference_caption(path, waveform: np.ndarray, style: str, max_new_tokens: int) -> str:
    """Greedy decoding by hand from the model's own forward: task tokens + style prefix, then argmax, with the
    checkpoint's generation_config suppressing its tokens (begin_suppress_tokens: at the first step only)."""
    from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    features = WhisperFeatureExtractor.from_pretrained(path)(waveform, sampling_rate=RATE,
                                                             return_tensors="pt").input_features
    ids = tokenizer.convert_tokens_to_ids(SPECIAL[1:]) + tokenizer(style, add_special_tokens=False)["input_ids"]
    prompt = len(ids)
    saved = json.loads((path / "generation_config.json").read_text())
    vocab = model.config.vocab_size
    with torch.inference_mode():
        encoded = model.model.encoder(features).last_hidden_state
        for step in range(max_new_tokens):
            logits = model(encoder_outputs=(encoded,), decoder_input_ids=torch.tensor([ids])).logits[0, -1]
            logits[saved["suppress_tokens"]] = -float("inf")
            if step == 0:  # Whisper's defaults: no leading space, no empty caption
                logits[[t for t in saved["begin_suppress_tokens"] if t < vocab]] = -float("inf")
            ids.append(int(logits.argmax()))
            if ids[-1] == tokenizer.eos_token_id:
                break
    return tokenizer.decode(ids[prompt:], skip_special_tokens=True).strip()


def test_audio_captions_match_a_greedy_decode_of_the_model(tiny_captioner):
    teacher = load(tiny_captioner, max_new_tokens=12)
    assert {f.name: (f.shape, f.dtype, f.kind) for f in teacher.fields()} == {"caption": ((), "str", "text")}
    assert teacher.provenance()["sees"] == "clips" and teacher.provenance()["config"]["window_seconds"] == 30.0
    waves = [tone(3.0), None, tone(5.0, 1200.0)]
    out = teacher(clip_batch(waves))
    assert out["caption"].shape == (3,) and out["caption"][1] == ""  # no audio: an empty caption, not a failure
    for i in (0, 2):
        expected = reference_caption(tiny_captioner, waves[i], "clotho > caption: ", 12)
        assert out["caption"][i] == expected and expected, i
        assert not ({"B", "C"} & set(out["caption"][i]))  # the checkpoint's suppressed tokens stay out

    other = load(tiny_captioner, max_new_tokens=12, style="audioset > keywords: ")
    assert other.provenance()["config"]["style"] == "audioset > keywords: "
    assert other(clip_batch(waves[:1]))["caption"][0] == reference_caption(tiny_captioner, waves[0],
                                                                           "audioset > keywords: ", 12)


def test_a_clip_longer_than_30_seconds_is_captioned_window_by_window(tiny_captioner):
    teacher = load(tiny_captioner, max_new_tokens=6)
    long = tone(34.0, 800.0)
    caption = teacher(clip_batch([long]))["caption"][0]
    first = reference_caption(tiny_captioner, long[:30 * RATE], "clotho > caption: ", 6)
    rest = reference_caption(tiny_captioner, long[30 * RATE:], "clotho > caption: ", 6)
    assert caption == f"{first} {rest}"


def test_other_checkpoints_are_refused_in_one_line(tiny_captioner, tmp_path):
    asr = save_tiny_captioner(tmp_path / "whisper-asr", architecture="WhisperForConditionalGeneration")
    with pytest.raises(UserError, match="speech-recognition Whisper"):
        build(TeacherSpec(CAPTIONER, str(asr)), S)
    remote = tmp_path / "remote"
    shutil.copytree(tiny_captioner, remote)
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "modeling.Captioner"}}))
    with pytest.raises(UserError, match="never runs a checkpoint's code"):
        build(TeacherSpec(CAPTIONER, str(remote)), S)
    from transformers import ASTConfig

    ast = tmp_path / "ast"
    ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(ast)
    with pytest.raises(UserError, match="expected whisper") as refused:
        build(TeacherSpec(CAPTIONER, str(ast)), S)
    assert "\n" not in str(refused.value)
    with pytest.raises(UserError, match="max_new_tokens must be 1.."):
        build(TeacherSpec(CAPTIONER, str(tiny_captioner), {"max_new_tokens": 500}), S)


def test_clap_audio_tags_and_audio_captioner_label_clips_through_the_cli(tiny_captioner, tmp_path):
    pytest.importorskip("av")
    from typer.testing import CliRunner

    from omnimill.cli import app
    from omnimill.corpus.media import decode_clip
    from omnimill.store.labels import LabelStore
    from test_audio_tags import TAGS, save_tiny_ast
    from test_clap import CLAP, reference_audio, save_tiny_clap
    from test_corpus_clip import write_video

    root = tmp_path / "videos"
    root.mkdir()
    write_video(str(root / "a.mp4"), seconds=4.0)  # a 440 Hz tone
    write_video(str(root / "b.mp4"), seconds=3.0, audio=False)
    clap, ast = save_tiny_clap(tmp_path / "clap", fused=False), save_tiny_ast(tmp_path / "ast")
    store = tmp_path / "clips.zarr"
    args = ["label", root, store, "--sample-kind", "clip", "--clips", "fixed:2", "--teacher", f"{CLAP}={clap}",
            "--teacher", f"{TAGS}={ast}", "--teacher", f"{CAPTIONER}={tiny_captioner}",
            "--option", f"{TAGS}.top_k=3", "--option", f"{CAPTIONER}.max_new_tokens=6",
            "--workers", "1", "--unit-size", "2", "--view-size", "32", "--no-progress"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output

    labels = LabelStore.open(str(store))
    assert list(labels.keys()) == ["a/clip_0000", "a/clip_0001", "b/clip_0000", "b/clip_0001"]
    for name in ("clap", "audio_tags", "audio_captioner"):
        assert labels.ok(name).all() and labels.provenance(name)["sees"] == "clips"
        assert labels.provenance(name)["checkpoint_sha256"]
    embedded = labels.outputs("clap")
    assert embedded["has_audio"].tolist() == [True, True, False, False]
    assert embedded["embedding"].shape == (4, 24) and not embedded["embedding"][2:].any()
    waveform = decode_clip(str(root / "a.mp4"), 0.0, 2.0, view_size=32).waveform  # what the worker decoded
    np.testing.assert_allclose(embedded["embedding"][0], reference_audio(clap, waveform), atol=1e-5)
    tags = labels.outputs("audio_tags")
    assert tags["ids"].shape == (4, 3) and tags["count"].tolist() == [3, 3, 0, 0]
    assert labels.provenance("audio_tags")["config"]["class_names"][0] == "Speech"
    captions = labels.outputs("audio_captioner")["caption"]
    assert all(captions[:2]) and list(captions[2:]) == ["", ""]
    assert captions[0] == reference_caption(tiny_captioner, waveform, "clotho > caption: ", 6)
    assert CliRunner().invoke(app, ["verify", str(store)]).exit_code == 0
