"""omnimill/labelers/log_mel.py: each audio segment's log-mel, as transformers' own spectrogram call computes it,
on real clips (videos written with PyAV); a clip without audio is the floor; end to end through the CLI."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("av")

from test_vad import clip_batch, place, tone, write_av  # noqa: E402

from omnimill.cli import app  # noqa: E402
from omnimill.corpus.media import AUDIO_RATE  # noqa: E402
from omnimill.errors import UserError  # noqa: E402
from omnimill.labelers.base import TeacherSpec  # noqa: E402
from omnimill.labelers.log_mel import FLOOR_LOG  # noqa: E402
from omnimill.labelers.registry import build  # noqa: E402
from omnimill.store.labels import LabelStore  # noqa: E402

LOG_MEL = "omnimill.labelers.log_mel:LogMel"
VIEW = 32


def log_mel(**options):
    return build(TeacherSpec(LOG_MEL, None, options), VIEW)


def test_fields_follow_the_options():
    assert [(f.name, f.shape, f.dtype, f.kind) for f in log_mel().fields()] == [
        ("mel", (3, 64, 200), "float32", "spectrogram"), ("has_audio", (), "bool", "scalar")]
    assert log_mel(n_mels=80, hop_ms=20, audio_segments=2, audio_seconds=1.0).fields()[0].shape == (2, 80, 50)
    with pytest.raises(UserError, match="has no option"):
        log_mel(mels=80)
    with pytest.raises(UserError, match="must be positive"):
        log_mel(n_mels=0)


def test_each_segment_is_the_librarys_log_mel_and_no_audio_is_the_floor(tmp_path):
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    write_av(tmp_path / "tones.mp4", place(6.0, (0.0, tone(2.0, 500)), (2.0, tone(2.0, 2000)), (4.0, tone(2.0, 4000))),
             6.0)
    write_av(tmp_path / "mute.mp4", None, 6.0)
    batch = clip_batch([tmp_path / "tones.mp4", tmp_path / "mute.mp4"], [(0, 6), (0, 6)])
    teacher = log_mel()
    out = teacher(batch)
    assert out["mel"].shape == (2, 3, 64, 200) and out["mel"].dtype == np.float32
    assert out["has_audio"].tolist() == [True, False]

    # the library's own call, by hand: Hann 400, hop 160, power, Slaney mel 0-8 kHz, floor 1e-6, natural log
    filters = mel_filter_bank(num_frequency_bins=201, num_mel_filters=64, min_frequency=0, max_frequency=8000,
                              sampling_rate=16000, norm="slaney", mel_scale="slaney")
    for k in range(3):
        expected = spectrogram(batch.clips["audio"][0, k], window_function(400, "hann"), frame_length=400,
                               hop_length=160, fft_length=400, power=2.0, mel_filters=filters, mel_floor=1e-6,
                               log_mel="log")
        np.testing.assert_allclose(out["mel"][0, k], expected[:, :200], rtol=1e-5, atol=1e-5)
    # the segments sit at the middles of the clip's thirds: 500 Hz, 2 kHz, 4 kHz in rising mel bands
    peaks = [int(np.median(out["mel"][0, k].argmax(0))) for k in range(3)]
    centres = np.array([np.argmax(filters[int(hz / 8000 * 200)]) for hz in (500, 2000, 4000)])
    assert np.abs(np.array(peaks) - centres).max() <= 1, (peaks, centres)
    assert (out["mel"][1] == np.float32(FLOOR_LOG)).all()


def test_a_store_of_other_segments_is_told_the_options(tmp_path):
    write_av(tmp_path / "t.mp4", tone(2.0), 2.0)
    with pytest.raises(UserError, match="audio_segments=3"):
        log_mel(audio_segments=2)(clip_batch([tmp_path / "t.mp4"], [(0, 2)]))


def test_log_mel_labels_a_clip_store_through_the_cli(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    write_av(root / "tone.mp4", tone(4.0, 1000), 4.0)
    write_av(root / "mute.mp4", None, 4.0)
    store = tmp_path / "clips.zarr"
    result = CliRunner().invoke(app, ["label", str(root), str(store), "--sample-kind", "clip", "--clips", "fixed:2",
                                      "--teacher", LOG_MEL, "--option", f"{LOG_MEL}.n_mels=32", "--workers", "1",
                                      "--view-size", str(VIEW), "--no-progress"])
    assert result.exit_code == 0, result.output
    labels = LabelStore.open(str(store))
    out = labels.outputs("log_mel")
    assert labels.ok("log_mel").all() and out["mel"].shape == (4, 3, 32, 200)
    assert out["has_audio"].tolist() == [False, False, True, True]
    assert (out["mel"][:2] == np.float32(FLOOR_LOG)).all() and out["mel"][2:].max() > 0
    provenance = labels.provenance("log_mel")
    assert provenance["sees"] == "clips" and provenance["fields"]["mel"]["kind"] == "spectrogram"
    assert provenance["config"]["n_mels"] == 32 and AUDIO_RATE == 16000
