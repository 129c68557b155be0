"""The audio tokenizer (omnimill/tokenize/audio.py) end to end through the CLI: real videos with espeak-ng speech and
tones, labelled with the log_mel teacher, a tiny tokenizer trained, evaluated against the mean spectrogram
(metrics, codebook usage, WAV files read back, spectrogram panels), and tokenized into a clip token store with
its time axis.

Run as a script it writes the corpus the measurement in docs uses:
    python tests/test_tokenize_audio.py DIR N_VIDEOS     (12 s videos: 2 clips of 6 s each with --clips fixed:6)
"""

from __future__ import annotations

import json
import shutil
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("av")
if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is not installed", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).parent))  # as a script too

from test_vad import place, speech, tone, write_av  # noqa: E402

from omnimill.cli import app  # noqa: E402
from omnimill.corpus.media import AUDIO_RATE  # noqa: E402

LOG_MEL = "omnimill.labelers.log_mel:LogMel"
VIDEO_SECONDS = 12.0
WORDS = ("hello there how are you today the quick brown fox jumps over a lazy dog please call stella ask her to "
         "bring these things with her from the store six spoons of fresh snow peas five thick slabs of blue cheese "
         "and maybe a snack for her brother bob we also need a small plastic snake and a big toy frog").split()


def sound(rng: np.random.Generator) -> np.ndarray:
    """VIDEO_SECONDS of speech (espeak-ng, random words and speed), tones and chirps at random times, some silence."""
    parts, t = [], float(rng.uniform(0, 0.5))
    while t < VIDEO_SECONDS - 0.5:
        what = rng.choice(["speech", "speech", "tone", "chirp"])
        if what == "speech":
            words = " ".join(rng.choice(WORDS, int(rng.integers(3, 9))))
            piece = speech(words, speed=int(rng.integers(120, 220)))
        else:
            seconds = float(rng.uniform(0.3, 1.5))
            if what == "tone":
                piece = tone(seconds, float(rng.uniform(150, 3500))) * float(rng.uniform(0.2, 1.0))
            else:
                time = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
                low, high = sorted(rng.uniform(200, 4000, 2))
                phase = 2 * np.pi * (low * time + (high - low) * time ** 2 / (2 * seconds))
                piece = (0.4 * np.sin(phase)).astype(np.float32)
        parts.append((t, piece))
        t += len(piece) / AUDIO_RATE + float(rng.uniform(0.05, 0.8))
    return place(VIDEO_SECONDS, *parts)


def write_corpus(root: Path, videos: int, seed: int = 0) -> Path:
    """`videos` mp4 files of VIDEO_SECONDS with sound(); every tenth without an audio stream."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(videos):
        write_av(root / f"v{i:04d}.mp4", None if i % 10 == 9 else sound(rng), VIDEO_SECONDS)
    return root


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """10 videos -> 20 clips of 6 s (3 audio segments of 2 s each: the whole clip), two without audio."""
    root = tmp_path_factory.mktemp("audio")
    write_corpus(root / "videos", 10)
    invoke("label", root / "videos", root / "clips.zarr", "--sample-kind", "clip", "--clips", "fixed:6",
           "--teacher", LOG_MEL, "--workers", "1", "--view-size", 32, "--no-progress")
    return root / "clips.zarr"


def test_audio_tokenizer_trains_beats_the_mean_spectrogram_and_is_heard(store, tmp_path):
    from omnimill.tokenize.base import load_tokenizer
    from omnimill.tokenize.data import open_field

    out = tmp_path / "audio_tok"
    invoke("tokenizer", "train", store, "--field", "log_mel/mel", "--kind", "audio", "--out", out, "--steps", 100,
           "--batch-size", 8, "--width", 16, "--vocab", 256, "--lr", 3e-3, "--holdout", 0.25, "--no-progress")
    tok = load_tokenizer(out)
    assert tok.kind == "audio" and tok.vocab_size == 240  # FSQ [8, 6, 5]
    assert tok.tokens_per_sample == 3 * 25 * 8  # K segments x (200 frames / 8) steps x 8 tokens a step
    assert tok.time_layout((3, 64, 200)) == {"steps": 3, "of": "audio_segments"}

    # encode gives (N, K x l) time-major: segment k's tokens are what segment k alone encodes to
    values = open_field(str(store), "log_mel/mel").read(np.arange(4))
    tokens = tok.encode(values)
    assert tokens.shape == (4, 600) and tokens.dtype == np.int32 and 0 <= tokens.min() and tokens.max() < 240
    for k in range(3):
        alone = {"mel": np.repeat(values["mel"][:, k:k + 1], 3, axis=1)}
        assert (tok.encode(alone)[:, :200] == tokens[:, 200 * k:200 * (k + 1)]).all()
    decoded = tok.decode(tokens)["mel"]
    assert decoded.shape == (4, 3, 64, 200) and decoded.dtype == np.float32

    result = invoke("tokenizer", "eval", out, store, "--listen", 1)
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads(result.output)["log_mel_l1"] == metrics["log_mel_l1"]
    assert metrics["heldout_with_audio"] >= 1
    assert metrics["log_mel_l1"] < metrics["baseline_log_mel_l1_mean"]
    assert metrics["spectral_convergence"] < metrics["baseline_spectral_convergence_mean"]
    assert 0 < metrics["codebook_usage"] <= 1 and metrics["perplexity"] > 1
    assert (out / "reconstructions.png").stat().st_size > 10_000 and (out / "usage.png").exists()
    assert [entry["file"] for entry in metrics["wav_files"]] == ["audio_0_original.wav", "audio_0_decoded.wav"]
    for entry in metrics["wav_files"]:  # 3 segments of 2 s, 0.25 s apart, 16-bit mono at 16 kHz
        with wave.open(str(out / entry["file"])) as f:
            assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (1, 2, AUDIO_RATE)
            pcm = np.frombuffer(f.readframes(f.getnframes()), "<i2")
        assert len(pcm) == 3 * 2 * AUDIO_RATE + 2 * AUDIO_RATE // 4 and np.abs(pcm).max() > 300

    # retraining into the same directory removes the old WAV files with the other files of a tokenizer
    invoke("tokenizer", "train", store, "--field", "log_mel/mel", "--kind", "audio", "--out", out, "--steps", 2,
           "--width", 8, "--no-progress")
    assert not list(out.glob("*.wav"))


def test_audio_tokens_go_into_the_token_store_with_their_time_axis(store, tmp_path):
    from omnimill.store.tokens import TokenStore

    out = tmp_path / "tok"
    invoke("tokenizer", "train", store, "--field", "log_mel/mel", "--kind", "audio", "--out", out, "--steps", 5,
           "--width", 8, "--time-stride", 16, "--n-tokens", 2, "--no-progress")
    invoke("tokenize", store, tmp_path / "tokens.zarr", "--tokenizer", out, "--crops", 2, "--workers", 1,
           "--no-progress")
    tokens = TokenStore.open(str(tmp_path / "tokens.zarr"))
    rows = tokens.read("log_mel_mel/tokens")
    assert rows.shape == (20, 2, 3 * 13 * 2)  # ceil(200 / 16) = 13 steps x 2 tokens, 3 segments
    assert (rows[:, 0] == rows[:, 1]).all()  # crops do not apply to sound
    assert tokens.attrs("log_mel_mel")["time"] == {"steps": 3, "of": "audio_segments"}


def test_an_audio_tokenizer_needs_log_mel_segments(store, tmp_path):
    result = CliRunner().invoke(app, ["tokenizer", "train", str(store), "--field", "log_mel/has_audio", "--kind",
                                      "audio", "--out", str(tmp_path / "t"), "--no-progress"])
    assert result.exit_code != 0 and "log-mel segments (K, M, F)" in result.output


if __name__ == "__main__":
    write_corpus(Path(sys.argv[1]), int(sys.argv[2]))
