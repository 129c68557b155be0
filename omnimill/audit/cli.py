"""`omnimill audit ...`: look at samples, their neighbours and every label they carry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from omnimill.errors import UserError, fail

audit_app = typer.Typer(help="Inspect samples, their neighbours and their labels.", no_args_is_help=True)
console = Console()


@audit_app.command("show")
def audit_show(
    store: Annotated[str, typer.Argument(help="Label store.")],
    key: Annotated[str, typer.Argument(help="Sample key (see the store's `keys` array).")],
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("sample.png"),
):
    """One sample with every label it carries, as a PNG panel."""
    from omnimill.audit.render import render_sample

    try:
        render_sample(store, key, out)
    except UserError as e:
        fail(str(e))
    console.print(f"wrote {out}")




@audit_app.command("index")
def audit_index(
    store: Annotated[str, typer.Argument(help="Label store.")],
    field: Annotated[str, typer.Option("--field", help="Embedding to index, TEACHER/FIELD, e.g. dinov2/cls.")],
    out: Annotated[Path, typer.Option(help="Directory to write the index to (new, empty, or an old index).")],
    memory_budget: Annotated[str, typer.Option(help="Most memory the index may take: 4GB, 512MB, 1.5GiB.")] = "4GB",
    latency_ms: Annotated[float, typer.Option(help="p99 latency target of one query, in ms.")] = 10.0,
    recall: Annotated[float, typer.Option(help="recall@10 against exact search that tuning aims for.")] = 0.99,
    queries: Annotated[int, typer.Option(help="Held-out queries for measuring recall and latency (as many others, "
                                                    "disjoint from them, tune the search parameter).")] = 1000,
    gpu: Annotated[Optional[bool], typer.Option("--gpu/--cpu", help="Build on a GPU (default: when one is "
                                                                    "visible to faiss).")] = None,
    kind: Annotated[Optional[str], typer.Option("--type", help="Force the index type: flat, hnsw, ivf or ivfpq "
                                                               "(default: chosen from N and the budget).")] = None,
):
    """Build a FAISS index of one embedding field: type from N and the budget, tuned to the latency target."""
    from omnimill.audit.index import build_index

    try:
        info = build_index(store, field, out, memory_budget, latency_ms, recall, queries, gpu, kind,
                           log=lambda line: console.print(line, highlight=False))
    except UserError as e:
        fail(str(e))
    m = info["measured"]
    params = ", ".join(f"{k}={v}" for k, v in info["params"].items()) or "exact"
    console.print(f"wrote {out}: {info['factory']} ({params}) over {info['n']:,} samples; recall@10 "
                  f"{m['recall@10']:.3f}, p50 {m['p50_ms']:.2f} ms, p99 {m['p99_ms']:.2f} ms; "
                  f"{info['build_seconds']:.1f}s", highlight=False)


@audit_app.command("query")
def audit_query(
    index: Annotated[str, typer.Argument(help="Index directory (from `omnimill audit index`).")],
    key: Annotated[Optional[str], typer.Option(help="Neighbours of this sample.")] = None,
    image: Annotated[Optional[Path], typer.Option(help="Neighbours of this image file (runs the field's "
                                                       "teacher).")] = None,
    text: Annotated[Optional[str], typer.Option(help="Neighbours of this text (teachers with a text tower: "
                                                     "clip, imagebind, caption_embed, clap).")] = None,
    audio: Annotated[Optional[Path], typer.Option(help="Neighbours of this audio or video file's sound (teachers "
                                                       "with an audio side: clap).")] = None,
    frame: Annotated[Optional[int], typer.Option(help="With --key on a per-frame index of clips: ask with this "
                                                      "frame of the clip (default: the clip's mean frame).")] = None,
    k: Annotated[int, typer.Option("-k", help="How many neighbours.")] = 10,
    html: Annotated[Optional[Path], typer.Option("--html", help="Also write an HTML report with every label "
                                                               "of the query and its neighbours.")] = None,
    store: Annotated[Optional[str], typer.Option(help="The label store, if it moved since the index was "
                                                      "built.")] = None,
    device: Annotated[str, typer.Option(help="Device for --image/--text/--audio: auto, cpu, cuda[:N].")] = "auto",
    teacher_plugin: Annotated[Optional[str], typer.Option(help="module.path:Class of a plug-in teacher you trust, "
                                                               "for --image/--text on a store it labelled; it "
                                                               "must be the one the store names.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
):
    """Nearest samples to a key, an image, a text or an audio file: a table, and optionally an HTML report."""
    import json
    import sys

    from rich.table import Table

    from omnimill.audit.query import query
    from omnimill.audit.report import write_report

    try:
        result = query(index, key=key, image=image, text=text, k=k, store=store, device=device,
                       teacher_plugin=teacher_plugin, audio=audio, frame=frame)
        if html is not None:
            write_report(result, html)
    except UserError as e:
        fail(str(e))
    if as_json:
        sys.stdout.write(json.dumps(result.as_dict(), indent=2) + "\n")
        return
    frames = result.info.get("unit") == "frame"  # a per-frame index: each clip at its best frame
    table = Table("rank", "key", *(["frame", "time (s)"] if frames else []), "cosine", "distance", "caption",
                  title=f"{result.info['field']} neighbours of {result.kind} {result.value!r}")
    for n in result.neighbours:
        at = [str(n.frame), f"{n.time:.2f}"] if frames else []
        table.add_row(str(n.rank), n.key, *at, f"{n.score:.4f}", f"{n.distance:.4f}", n.caption)
    console.print(table)
    if html is not None:
        console.print(f"wrote {html}")


@audit_app.command("report")
def audit_report(
    store: Annotated[str, typer.Argument(help="Label store of clips, or a document store.")],
    key: Annotated[str, typer.Argument(help="Clip key (see the store's `keys` array), e.g. VIDEO/clip_0003; or "
                                            "a document's DOC_KEY.")],
    out: Annotated[Optional[Path], typer.Option(help="HTML page to write (one file: pictures and audio inline); "
                                                     "default clip.html, or document.html.")] = None,
    labels: Annotated[Optional[str], typer.Option(help="Document store only: the label store of its images "
                                                       "(keys DOC_KEY/img_NN).")] = None,
    fetched: Annotated[Optional[str], typer.Option(help="Document store only: the fetched store of its URL "
                                                        "images (`omnimill fetch`).")] = None,
):
    """One clip, or one document, as an HTML page. A clip: frame strip with every per-frame label, audio player,
    waveform, spectrogram, speech segments, transcript with times, captions. A document: its metadata and filter
    verdicts, its text with each image inline, each image's labels a click away."""
    from omnimill.audit.doc_report import is_document_store, write_doc_report

    try:
        if is_document_store(store):
            out = write_doc_report(store, key, out or Path("document.html"), labels, fetched)
        elif labels or fetched:
            raise UserError(f"--labels and --fetched go with a document store; {store} is not one (a clip store's "
                            "page needs neither)")
        else:
            from omnimill.audit.clip_report import write_clip_report

            out = write_clip_report(store, key, out or Path("clip.html"))
    except UserError as e:
        fail(str(e))
    console.print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)", highlight=False)


@audit_app.command("dups")
def audit_dups(
    index: Annotated[str, typer.Argument(help="Index directory (from `omnimill audit index`).")],
    threshold: Annotated[float, typer.Option(help="Near-duplicates: cosine similarity at least this.")] = 0.95,
    k: Annotated[int, typer.Option("-k", help="Neighbours each sample looks at.")] = 16,
    store: Annotated[Optional[str], typer.Option(help="The label store, if it moved.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
):
    """Groups of near-duplicate samples (cosine >= threshold, joined transitively), largest first."""
    import json
    import sys

    from omnimill.audit.dups import find_duplicates

    try:
        groups, info = find_duplicates(index, threshold, k, store)
    except UserError as e:
        fail(str(e))
    if as_json:
        sys.stdout.write(json.dumps({"index": index, "field": info["field"], "threshold": threshold, "k": k,
                                     "n": info["n"], "groups": [g.as_dict() for g in groups]}, indent=2) + "\n")
        return
    in_groups = sum(len(g.keys) for g in groups)
    console.print(f"{len(groups)} groups, {in_groups} of {info['n']:,} samples, cosine >= {threshold:g} on "
                  f"{info['field']}", highlight=False)
    for n, g in enumerate(groups, 1):
        console.print(f"group {n} ({len(g.keys)} samples, weakest link {g.min_cosine:.4f}): " + ", ".join(g.keys),
                      highlight=False, soft_wrap=True)
