"""omnimill/labelers/vad.py: the real silero-vad shipped in its wheel, on real clips (videos written with PyAV,
speech synthesized by espeak-ng where it is installed), against silero's own get_speech_timestamps; end to
end through `omnimill label --sample-kind clip`. `speech`, `write_av` and `clip_batch` serve test_asr.py too."""

from __future__ import annotations

import importlib.util
import io
import shutil
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("av")
if importlib.util.find_spec("silero_vad") is None:  # not imported here: importing it sets torch to one thread
    pytest.skip("silero-vad is not installed", allow_module_level=True)

from omnimill.cli import app  # noqa: E402
from omnimill.corpus.clip import ClipKind  # noqa: E402
from omnimill.corpus.media import AUDIO_RATE, decode_clip  # noqa: E402
from omnimill.labelers.base import Batch, TeacherSpec  # noqa: E402
from omnimill.labelers.registry import build  # noqa: E402
from omnimill.store.labels import LabelStore  # noqa: E402

VAD = "omnimill.labelers.vad:VAD"
VIEW = 32
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def speech(text: str, speed: int = 150) -> np.ndarray:
    """`text` spoken by espeak-ng (its English voice), 16 kHz mono float32."""
    import av

    wav = subprocess.run(["espeak-ng", "-v", "en", "-s", str(speed), "--stdout", text], check=True,
                         capture_output=True).stdout
    resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
    with av.open(io.BytesIO(wav)) as f:
        pieces = [r.to_ndarray()[0] for frame in f.decode(audio=0) for r in resampler.resample(frame)]
    pieces += [r.to_ndarray()[0] for r in resampler.resample(None)]
    return np.concatenate(pieces).astype(np.float32)


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def place(seconds: float, *parts: tuple[float, np.ndarray]) -> np.ndarray:
    """A waveform of `seconds` of silence with each (start seconds, samples) part laid in."""
    out = np.zeros(int(seconds * AUDIO_RATE), np.float32)
    for start, samples in parts:
        a = int(start * AUDIO_RATE)
        out[a:a + samples.size] = samples[:out.size - a]
    return out


def write_av(path, audio: np.ndarray | None, seconds: float, fps: int = 10) -> None:
    """A real mp4: grey frames, and `audio` (16 kHz mono) as its AAC track; no audio stream when None."""
    import av

    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = None if audio is None else out.add_stream("aac", rate=AUDIO_RATE)  # every stream before muxing
        if a is not None:
            a.layout = "mono"
        for i in range(int(seconds * fps)):
            for p in v.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 100, np.uint8), format="rgb24")):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
        if a is None:
            return
        for s in range(0, audio.size, 1024):
            frame = av.AudioFrame.from_ndarray(audio[None, s:s + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts = AUDIO_RATE, s
            for p in a.encode(frame):
                out.mux(p)
        for p in a.encode():
            out.mux(p)


def clip_batch(paths: list, spans: list[tuple[float, float]]) -> Batch:
    """The Batch the engine gives a teacher that sees clips, decoded from real files as the worker does."""
    kind = ClipKind()
    decoded = [decode_clip(str(p), a, b, view_size=VIEW) for p, (a, b) in zip(paths, spans)]
    fields = kind.clip_fields(decoded)
    return Batch(fields["frames"], [kind.frame_infos(d)[0] for d in decoded],
                 [f"k{i}" for i in range(len(paths))], clips=fields)


def vad(**options):
    teacher = build(TeacherSpec(VAD, None, options), VIEW)
    teacher.load()
    return teacher


def test_vad_fields_and_a_tone_and_silence_are_not_speech(tmp_path):
    write_av(tmp_path / "tone.mp4", tone(4.0), 4.0)
    write_av(tmp_path / "mute.mp4", None, 3.0)
    write_av(tmp_path / "quiet.mp4", np.zeros(3 * AUDIO_RATE, np.float32), 3.0)
    teacher = vad()
    assert [(f.name, f.shape, f.dtype, f.kind) for f in teacher.fields()] == [
        ("share", (), "float32", "scalar"), ("segments", (16, 2), "float32", "scalar"),
        ("count", (), "int32", "count"), ("audio_share", (3,), "float32", "scalar")]
    b = clip_batch([tmp_path / "tone.mp4", tmp_path / "mute.mp4", tmp_path / "quiet.mp4"],
                   [(0, 4), (0, 3), (0, 3)])
    assert b.clips["has_audio"].tolist() == [True, False, True]
    out = teacher(b)
    assert out["share"].tolist() == [0, 0, 0] and out["count"].tolist() == [0, 0, 0]
    assert not out["segments"].any() and not out["audio_share"].any()
    info = teacher.provenance()
    assert info["sees"] == "clips" and info["checkpoint_files"] == {"silero_vad.jit": info["checkpoint_sha256"]}
    assert "silero_vad" in info["libraries"]


@needs_espeak
def test_vad_finds_espeak_speech_as_silero_does_alone(tmp_path):
    import torch

    hello, fox = speech("Hello there, how are you today?"), speech("The quick brown fox jumps over the lazy dog.")
    waves = {"hello.mp4": place(6.0, (1.0, hello)),
             "both.mp4": place(9.0, (0.5, fox), (4.0, tone(1.0)), (6.0, hello)),
             "tone.mp4": tone(3.0)}
    for name, wave in waves.items():
        write_av(tmp_path / name, wave, len(wave) / AUDIO_RATE)
    b = clip_batch([tmp_path / n for n in waves], [(0, 6), (0, 9), (0, 3)])
    threads = torch.get_num_threads()
    teacher = vad()
    out = teacher(b)
    assert torch.get_num_threads() == threads  # silero sets one thread on import and the teacher runs on one; not ours

    # the same segments silero gives each clip's waveform alone, with its own loop and defaults
    from silero_vad import get_speech_timestamps  # imported by the teacher already: no change of threads now

    for i, wave in enumerate(b.clips["waveforms"]):
        alone = get_speech_timestamps(torch.from_numpy(wave), teacher.model, return_seconds=False)
        expected = np.array([[s["start"], s["end"]] for s in alone], np.float32).reshape(-1, 2) / AUDIO_RATE
        assert out["count"][i] == len(expected)
        np.testing.assert_allclose(out["segments"][i, :len(expected)], expected, atol=1e-4)
        assert not out["segments"][i, len(expected):].any()

    hello_s = hello.size / AUDIO_RATE
    assert out["count"][2] == 0 and out["share"][2] == 0  # a tone is no speech
    assert 0.5 * hello_s / 6 < out["share"][0] < 1.3 * hello_s / 6
    first, last = out["segments"][0, 0, 0], out["segments"][0, out["count"][0] - 1, 1]
    assert abs(first - 1.0) < 0.3 and abs(last - (1.0 + hello_s)) < 0.5  # where the speech was laid
    segs = out["segments"][1, :out["count"][1]]
    assert not ((segs[:, 0] < 4.8) & (segs[:, 1] > 4.2)).any()  # the tone between the sentences is not speech
    assert abs(segs[0, 0] - 0.5) < 0.3 and abs(segs[-1, 1] - (6.0 + hello_s)) < 0.5
    # audio segments (3 s each, spread over the clip) line up with the speech inside them
    spans = b.clips["audio_spans"][1]
    for k, (a, z) in enumerate(spans):
        inside = sum(max(0.0, min(z, e) - max(a, s)) for s, e in segs) / (z - a)
        assert out["audio_share"][1, k] == pytest.approx(inside, abs=1e-5)
    assert out["audio_share"][1].max() > 0.5


def test_vad_options_are_checked(tmp_path):
    from omnimill.errors import UserError

    with pytest.raises(UserError, match="has no option"):
        build(TeacherSpec(VAD, None, {"treshold": 0.4}), VIEW)
    with pytest.raises(UserError, match="takes no checkpoint"):
        build(TeacherSpec(VAD, "/models/silero"), VIEW)
    write_av(tmp_path / "t.mp4", tone(2.0), 2.0)
    with pytest.raises(UserError, match="audio_segments=3"):
        vad(audio_segments=2)(clip_batch([tmp_path / "t.mp4"], [(0, 2)]))


@needs_espeak
def test_vad_labels_a_clip_store_through_the_cli(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    write_av(root / "talk.mp4", place(4.0, (0.5, speech("Good morning everybody."))), 4.0)
    write_av(root / "mute.mp4", None, 4.0)
    store = tmp_path / "clips.zarr"
    result = CliRunner().invoke(app, ["label", str(root), str(store), "--sample-kind", "clip", "--clips", "fixed:2",
                                      "--teacher", VAD, "--workers", "1", "--view-size", str(VIEW), "--no-progress"])
    assert result.exit_code == 0, result.output
    labels = LabelStore.open(str(store))
    assert list(labels.keys()) == ["mute/clip_0000", "mute/clip_0001", "talk/clip_0000", "talk/clip_0001"]
    out = labels.outputs("vad")
    assert labels.ok("vad").all() and out["segments"].shape == (4, 16, 2) and out["audio_share"].shape == (4, 3)
    assert out["share"][:2].tolist() == [0, 0] and out["count"][:2].tolist() == [0, 0]  # no audio stream
    assert out["share"][2] > 0.4 and out["count"][2] >= 1 and 0.2 < out["segments"][2, 0, 0] < 0.8
    assert labels.provenance("vad")["sees"] == "clips"
