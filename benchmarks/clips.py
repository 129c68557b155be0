"""Clips, measured side by side in one run: (1) what one clip costs to decode, omnimill's seek
(corpus.media.decode_clip) against the two usual ways without seeking; (2) clips/s of `omnimill label`
(engine.label, 1 worker on a LocalCluster) against the hand-written single-process PyAV loop a user would
write instead, doing the same decode and running the same teachers.

    .venv/bin/python benchmarks/clips.py [--minutes 10] [--at 300] [--videos 12] [--video-seconds 60]
    .venv/bin/python benchmarks/clips.py --only label      # one part; the other's figures stay in the JSON

(1) Each way runs in its own process on the same generated long video, so that its peak memory is its own.

The video: MINUTES of 160x120 h264 at 25 fps with AAC audio (a moving bar; small, so the file is made in
seconds, and decoding cost is per frame, so longer files scale linearly). One clip of 10 s from second AT,
8 frames at a 224 px view plus 3 audio segments:
  seek    decode_clip: seek to each frame's keyframe, decode forward to it; audio seeks too
  scan    decode from the start to the clip's end, keeping nothing (the cheapest way without seeking)
  whole   decode every frame to RGB and keep them, then take the clip (what a read_video-style loader does)

(2) VIDEOS files of VIDEO_SECONDS, 320x240 h264 at 25 fps (a keyframe per 2 s) with AAC, cut `fixed:5`;
every clip is 8 frames at a 64 px view plus 3 audio segments of 2 s (the span's audio decoded once), and
teachers rgb and canny. The hand loop (`hand_loop`) opens each file once and, per clip, seeks to the clip
and decodes forward to its frames, then seeks its audio, with PyAV; it scales to the view, runs the
teachers on the clip's frames and keeps the arrays. The engine's figures: end to end (the whole `label`
call: index, store creation, worker start-up, every unit) and steady (clips/s once the worker's first
unit, which carries imports and teacher loading, is done).

Writes benchmarks/results/clips.json; docs/BENCHMARKS.md's tables are rendered from it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "clips.json"
FPS, WIDTH, HEIGHT, RATE = 25, 160, 120, 16000
CLIP_SECONDS = 10.0


def make_video(path: str, minutes: float) -> None:
    import av

    with av.open(path, "w") as out:
        video = out.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "g": "50"})  # a keyframe per 2 s
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        audio = out.add_stream("aac", rate=RATE)
        audio.layout = "mono"
        x = np.arange(WIDTH)
        for i in range(int(minutes * 60 * FPS)):
            image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
            image[:, (x + i) % WIDTH < 40] = (200, 80, 30)
            image[..., 2] = i % 256
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        t = np.arange(int(minutes * 60 * RATE)) / RATE
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for k in range(0, tone.size, 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, k:k + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts = RATE, k
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)


def measure(way: str, path: str, at: float) -> dict:
    """Runs in a child process: seconds for one clip, and this process's peak RSS."""
    import av

    from omnimill.corpus.media import decode_clip

    imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the same imports for every way
    started = time.perf_counter()
    if way == "seek":
        frames = len(decode_clip(path, at, at + CLIP_SECONDS, view_size=224).frames)
    elif way == "scan":
        frames = 0
        with av.open(path) as container:
            for frame in container.decode(video=0):
                frames += 1
                if frame.time >= at + CLIP_SECONDS:
                    break
    else:
        with av.open(path) as container:
            frames = len([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "frames_decoded_or_kept": frames,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_after_imports_mb": imported}


LABEL_SIZE, LABEL_CLIP, VIEW, FRAMES, SEGMENTS, SEGMENT_SECONDS = (320, 240), 5.0, 64, 8, 3, 2.0
TEACHERS = ["rgb", "canny"]


def make_label_corpus(root: Path, videos: int, seconds: float) -> None:
    """VIDEOS files of a moving bar over noise (so edges and h264 frames cost what real ones do) with a tone."""
    import av

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h = LABEL_SIZE
    noise = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    for v in range(videos):
        with av.open(str(root / f"video{v:03d}.mp4"), "w") as out:
            video = out.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "g": "50"})
            video.width, video.height, video.pix_fmt = w, h, "yuv420p"
            audio = out.add_stream("aac", rate=RATE)
            audio.layout = "mono"
            x = np.arange(w)
            sent = 0
            for i in range(int(seconds * FPS)):
                image = noise.copy()
                image[:, (x + 4 * i + 37 * v) % w < 60] = (200, 80 + 10 * v % 100, 30)
                for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    out.mux(packet)
                while sent < (i + 1) * RATE // FPS:  # interleaved, as a camera writes
                    t = (sent + np.arange(1024)) / RATE
                    frame = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32),
                                                       format="flt", layout="mono")
                    frame.sample_rate, frame.pts = RATE, sent
                    sent += 1024
                    for packet in audio.encode(frame):
                        out.mux(packet)
            for stream in (video, audio):
                for packet in stream.encode():
                    out.mux(packet)


def hand_view(frame, scaler) -> np.ndarray:
    """The canonical view, by hand: short side scaled to VIEW inside swscale (one scaler reused: a new one per
    frame, as frame.reformat makes, costs 8x), centre square."""
    scale = VIEW / min(frame.width, frame.height)
    sw, sh = max(VIEW, round(frame.width * scale)), max(VIEW, round(frame.height * scale))
    rgb = scaler.reformat(frame, width=sw, height=sh, format="rgb24", interpolation="BICUBIC").to_ndarray()
    x0, y0 = (sw - VIEW) // 2, (sh - VIEW) // 2
    return rgb[y0:y0 + VIEW, x0:x0 + VIEW]


def hand_clip(container, start: float, end: float) -> tuple[np.ndarray, np.ndarray]:
    """One clip with PyAV by hand: FRAMES frames (the one on screen at the middle of each of FRAMES equal
    parts, one seek to the clip, then decoding forward) and the span's audio, mono 16 kHz, cut into SEGMENTS
    segments."""
    from av.audio.resampler import AudioResampler
    from av.video.reformatter import VideoReformatter

    video, audio, scaler = container.streams.video[0], container.streams.audio[0], VideoReformatter()
    targets, views, shown = list(start + (np.arange(FRAMES) + 0.5) * (end - start) / FRAMES), [], None
    for s in container.streams:
        s.discard = type(s.discard).default if s is video else type(s.discard).all
    container.seek(int(start / video.time_base), stream=video, backward=True)
    for frame in container.decode(video):  # one seek, then forward through the clip
        while targets and frame.time > targets[0] + 1e-6:
            views.append(hand_view(shown if shown is not None else frame, scaler))
            targets.pop(0)
        if not targets:
            break
        shown = frame
    if targets:  # the stream ended: the last frame stays on screen
        views += [hand_view(shown, scaler)] * len(targets)
    for s in container.streams:
        s.discard = type(s.discard).default if s is audio else type(s.discard).all
    container.seek(int(start / audio.time_base), stream=audio, backward=True)
    resampler, pieces, first = AudioResampler(format="flt", layout="mono", rate=RATE), [], None
    for frame in container.decode(audio):
        first = frame.time if first is None else first
        pieces += [p.to_ndarray().reshape(-1) for p in resampler.resample(frame)]
        if first + sum(p.size for p in pieces) / RATE >= end:
            break
    samples = np.concatenate(pieces)[max(0, int(round((start - first) * RATE))):][:int(round((end - start) * RATE))]
    length = int(SEGMENT_SECONDS * RATE)
    centres = (np.arange(SEGMENTS) + 0.5) * (end - start) / SEGMENTS
    begins = np.clip(centres - SEGMENT_SECONDS / 2, 0, max(0.0, end - start - SEGMENT_SECONDS))
    segments = np.zeros((SEGMENTS, length), np.float32)
    for k, b in enumerate(begins):
        piece = samples[int(round(b * RATE)):][:length]
        segments[k, :piece.size] = piece
    return np.stack(views), segments


def hand_loop(corpus: Path) -> dict:
    """What a user writes instead of the engine: one process, file after file, clip after clip, no overlap;
    the same teachers (the registry's rgb and canny) on each clip's frames; every array kept."""
    import av

    from omnimill.corpus.clip import DEFAULT_MIN_SECONDS
    from omnimill.corpus.image import ImageInfo
    from omnimill.labelers.base import Batch, TeacherSpec
    from omnimill.labelers.registry import build

    started = time.perf_counter()
    teachers = [build(TeacherSpec.parse(name), VIEW) for name in TEACHERS]
    for teacher in teachers:
        teacher.load("cpu", "float32")
    kept, clips, first_done = [], 0, None
    for path in sorted(corpus.glob("*.mp4")):
        with av.open(str(path)) as container:
            duration = container.duration / 1_000_000
            bounds = np.arange(0.0, duration - 1e-6, LABEL_CLIP)
            for a in bounds:
                b = min(a + LABEL_CLIP, duration)
                if b - a < DEFAULT_MIN_SECONDS:  # as the clip index: a tail this short is not a clip
                    continue
                views, segments = hand_clip(container, float(a), float(b))
                box = ((LABEL_SIZE[0] - LABEL_SIZE[1]) // 2, 0, (LABEL_SIZE[0] + LABEL_SIZE[1]) // 2, LABEL_SIZE[1])
                infos = [ImageInfo(*LABEL_SIZE, "RGB", "h264", 0, False, box) for _ in views]
                batch = Batch(views, infos, [f"{path.stem}/clip_{clips:04d}#{t}" for t in range(FRAMES)])
                kept.append(([teacher(batch) for teacher in teachers], segments))
                clips += 1
        first_done = first_done or (time.perf_counter(), clips)  # steady: after the first file
    ended = time.perf_counter()
    return {"seconds": ended - started, "clips": clips, "clips_per_s": clips / (ended - started),
            "steady_clips_per_s": (clips - first_done[1]) / (ended - first_done[0]),
            "first_rgb": kept[0][0][0]["image"]}


def engine_label(corpus: Path, store: Path, unit_size: int) -> dict:
    """The whole `omnimill label` call (engine.label, what the CLI runs) with 1 worker on a LocalCluster."""
    import shutil

    from distributed import Client, LocalCluster

    from omnimill.engine.label import LabelOptions, label
    from omnimill.store.labels import LabelStore

    shutil.rmtree(store, ignore_errors=True)
    options = LabelOptions(sample_kind="clip", clips=f"fixed:{LABEL_CLIP:g}", view_size=VIEW, unit_size=unit_size,
                           frames=FRAMES, audio_segments=SEGMENTS, audio_seconds=SEGMENT_SECONDS, progress=False,
                           device="cpu", dtype="float32")
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0",
                      local_directory=str(store.parent / "dask")) as cluster, Client(cluster):
        options.scheduler = cluster.scheduler_address
        started, wall = time.perf_counter(), time.time()
        result = label(str(corpus), str(store), TEACHERS, options)
        seconds, wall_end = time.perf_counter() - started, time.time()
    assert not result.units_failed and result.samples_failed == 0, result
    stats = sorted(result.unit_stats, key=lambda st: st["started"])
    later = stats[1:]
    steady = sum(st["n"] for st in later) / (later[-1]["ended"] - stats[0]["ended"]) if later else float("nan")
    labels = LabelStore.open(str(store))
    clips = len(list(labels.keys()))
    return {"seconds": seconds, "clips": clips, "clips_per_s": clips / seconds, "steady_clips_per_s": steady,
            "units": len(stats), "unit_seconds_median": float(np.median([st["seconds"] for st in stats])),
            # where the end-to-end time goes besides units: listing, store creation and submission before the
            # first unit; the first unit's own extra (imports, teacher loading); recording after the last
            "before_first_unit_s": stats[0]["started"] - wall, "first_unit_s": stats[0]["seconds"],
            "after_last_unit_s": wall_end - max(st["ended"] for st in stats),
            "decode_wait_share": sum(st["decode_wait"] for st in stats) / sum(st["seconds"] for st in stats),
            "first_rgb": labels.outputs("rgb")["image"][0]}


def label_part(args) -> dict:
    """Hand loop, then engine, on the same corpus in the same run."""
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "videos"
        started = time.perf_counter()
        make_label_corpus(corpus, args.videos, args.video_seconds)
        made = time.perf_counter() - started
        print(f"{args.videos} videos of {args.video_seconds:g} s {LABEL_SIZE[0]}x{LABEL_SIZE[1]} made in "
              f"{made:.1f} s", flush=True)
        hand = hand_loop(corpus)
        print(f"hand loop  {hand['clips']} clips in {hand['seconds']:.2f} s: {hand['clips_per_s']:.1f} clips/s "
              f"(steady {hand['steady_clips_per_s']:.1f})", flush=True)
        engine = engine_label(corpus, Path(tmp) / "clips.zarr", args.unit_size)
        print(f"engine     {engine['clips']} clips in {engine['seconds']:.2f} s: {engine['clips_per_s']:.1f} clips/s "
              f"(steady {engine['steady_clips_per_s']:.1f}; {engine['units']} units, median "
              f"{engine['unit_seconds_median']:.2f} s; {engine['before_first_unit_s']:.2f} s before the first, "
              f"first {engine['first_unit_s']:.2f} s, {engine['after_last_unit_s']:.2f} s after the last; waiting "
              f"for decode {100 * engine['decode_wait_share']:.0f}% of unit time)", flush=True)
    same = int(np.abs(hand.pop("first_rgb").astype(int) - engine.pop("first_rgb").astype(int)).max())
    ratios = {"end_to_end": engine["clips_per_s"] / hand["clips_per_s"],
              "steady": engine["steady_clips_per_s"] / hand["steady_clips_per_s"]}
    print(f"engine / hand loop: {ratios['end_to_end']:.2f}x end to end, {ratios['steady']:.2f}x steady "
          f"(first clip's frames differ by at most {same} grey levels)", flush=True)
    return {"videos": args.videos, "video_seconds": args.video_seconds, "width": LABEL_SIZE[0],
            "height": LABEL_SIZE[1], "fps": FPS, "clip_seconds": LABEL_CLIP, "view": VIEW, "frames": FRAMES,
            "audio_segments": SEGMENTS, "audio_seconds": SEGMENT_SECONDS, "teachers": TEACHERS,
            "unit_size": args.unit_size, "made_seconds": made, "rows": {"hand": hand, "engine": engine},
            "ratios": ratios, "first_clip_max_abs_diff": same}


def decode_part(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "long.mp4")
        started = time.perf_counter()
        make_video(path, args.minutes)
        made = time.perf_counter() - started
        rows = {}
        for way in ("seek", "scan", "whole"):
            out = subprocess.run([sys.executable, __file__, "--at", str(args.at), "--child", way, path],
                                 check=True, capture_output=True, text=True).stdout
            rows[way] = json.loads(out.strip().splitlines()[-1])
            print(f"{way:6} {rows[way]['seconds']:.3f} s, peak RSS {rows[way]['peak_rss_mb']:.0f} MB "
                  f"({rows[way]['rss_after_imports_mb']:.0f} MB after imports)", flush=True)
        size = Path(path).stat().st_size
    ratios = {"whole / seek": rows["whole"]["seconds"] / rows["seek"]["seconds"],
              "scan / seek": rows["scan"]["seconds"] / rows["seek"]["seconds"]}
    print(f"whole-file decode / seek: {ratios['whole / seek']:.0f}x", flush=True)
    return {"video": {"minutes": args.minutes, "width": WIDTH, "height": HEIGHT, "fps": FPS, "mb": size / 1e6,
                      "made_seconds": made}, "clip_seconds": CLIP_SECONDS, "rows": rows, "ratios": ratios}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="decode part: the long video's length")
    parser.add_argument("--at", type=float, default=300.0, help="decode part: the clip's start, seconds")
    parser.add_argument("--videos", type=int, default=12, help="label part: how many videos")
    parser.add_argument("--video-seconds", type=float, default=60.0, help="label part: each video's length")
    parser.add_argument("--unit-size", type=int, default=24, help="label part: clips per engine unit")
    parser.add_argument("--only", choices=("decode", "label"), help="run one part; keep the other's figures")
    parser.add_argument("--child", nargs=2, metavar=("WAY", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.at)))
        return 0
    result = json.loads(RESULTS.read_text()) if args.only and RESULTS.exists() else {}
    if args.only != "label":
        result.update(decode_part(args))
        result["args"] = {"minutes": args.minutes, "at": args.at}
    if args.only != "decode":
        result["label"] = label_part(args)
    result["machine"] = {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                         "cores": os.cpu_count()}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
