"""What one clip costs to decode: omnimill's seek (corpus.media.decode_clip) against the two usual ways without
seeking, on the same generated long video, each in its own process so that its peak memory is its own.

    .venv/bin/python benchmarks/clips.py [--minutes 10] [--at 300]      # make bench

The video: MINUTES of 160x120 h264 at 25 fps with AAC audio (a moving bar; small, so the file is made in
seconds, and decoding cost is per frame, so longer files scale linearly). One clip of 10 s from second AT,
8 frames at a 224 px view plus 3 audio segments:
  seek    decode_clip: seek to each frame's keyframe, decode forward to it; audio seeks too
  scan    decode from the start to the clip's end, keeping nothing (the cheapest way without seeking)
  whole   decode every frame to RGB and keep them, then take the clip (what a read_video-style loader does)
Writes benchmarks/results/clips.json; docs/BENCHMARKS.md's table is rendered from it.
"""

from __future__ import annotations

import argparse
import json
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--at", type=float, default=300.0, help="the clip's start, seconds")
    parser.add_argument("--child", nargs=2, metavar=("WAY", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.at)))
        return 0
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
    result = {"args": vars(args) | {"child": None}, "video": {"minutes": args.minutes, "width": WIDTH, "height": HEIGHT,
                                                          "fps": FPS, "mb": size / 1e6, "made_seconds": made},
              "clip_seconds": CLIP_SECONDS, "rows": rows,
              "ratios": {"whole / seek": rows["whole"]["seconds"] / rows["seek"]["seconds"],
                         "scan / seek": rows["scan"]["seconds"] / rows["seek"]["seconds"]},
              "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()}}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"whole-file decode / seek: {result['ratios']['whole / seek']:.0f}x; wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
