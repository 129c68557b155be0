"""The `omnimill` command. Thin: parse, validate, call a stage function, render the result.

Exit codes say what the store holds, not only what this run did: 0 done; 2 wrong input (one line on
stderr says what to do, nothing written); 3 complete, but some samples could not be labelled (each is
recorded: `omnimill status STORE`; the same command retries those that may be transient) or, for
tokenize, some units wait for labels; 4 some units failed after every retry, or the disk is full (run
the same command again); 1 `verify` found damage.
"""

from __future__ import annotations

import contextlib
import errno
import json
import sys
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from omnimill.errors import UserError, fail
from omnimill.shards.cli import FORCE_HELP

app = typer.Typer(help="omnimill: a data engine for omni-modal pretraining.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
console = Console()


@contextlib.contextmanager
def job(store: str):
    """Wrong input: one line, exit 2. A full disk: one line, exit 4 (the lock is released by the job;
    the same command resumes once space is freed)."""
    try:
        yield
    except UserError as e:
        fail(str(e))
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        fail(f"no space left on the device while writing {store} ({e.filename or e.strerror}); free space and "
             "run the same command again: finished units are kept", 4)


@app.command()
def label(
    corpus: Annotated[str, typer.Argument(help="Folder of images, WebDataset tars (brace ranges) or a "
                                               ".jsonl/.csv/.parquet manifest; local path or fsspec URL. With "
                                               "--sample-kind document: a document store (documents.zarr).")],
    store: Annotated[str, typer.Argument(help="Label store to create or resume (Zarr v3), e.g. labels.zarr")],
    teacher: Annotated[list[str], typer.Option("--teacher", "-t", help="NAME[=CHECKPOINT], repeatable. "
                                               "`omnimill teachers` lists them.")] = [],
    option: Annotated[list[str], typer.Option("--option", "-o", help="TEACHER.KEY=VALUE teacher setting, "
                                              "repeatable (e.g. sam.points_per_side=16); VALUE is JSON or text.")] = [],
    workers: Annotated[Optional[int], typer.Option(help="Workers of the embedded cluster (default: one per GPU, "
                                                        "else cores/2).")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Join an existing Dask cluster: tcp://HOST:8786 "
                                                          "or a scheduler file.")] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per teacher call (a clip gives its T frames).")] = 32,
    unit_size: Annotated[Optional[int], typer.Option(help="Samples per work unit = per chunk (new stores; "
                                                          "default 128).")] = None,
    view_size: Annotated[Optional[int], typer.Option(help="Side of the canonical view in pixels (new stores; "
                                                          "default 384).")] = None,
    sample_kind: Annotated[Optional[str], typer.Option(help="What a sample is: image, clip, or document (the "
                                                            "images of a document store, keyed DOC_KEY/img_NN) (new "
                                                            "stores; default image). `omnimill teachers` lists the "
                                                            "kinds.")]
    = None,
    fetched: Annotated[Optional[str], typer.Option(help="Document stores: the fetched store of CORPUS's URL images "
                                                        "(`omnimill fetch CORPUS/image_urls.jsonl FETCHED`); needed "
                                                        "when some images are URLs (new stores).")] = None,
    doc_filter: Annotated[Optional[str], typer.Option(help="Document stores: label only the images of the documents "
                                                           "this `omnimill documents filter --name` kept (new "
                                                           "stores).")] = None,
    clips: Annotated[Optional[str], typer.Option(help="Clip stores: fixed:SECONDS cuts each video into pieces, "
                                                      "spans takes a manifest's start/end, scenes[:DETECTOR] cuts "
                                                      "at shot boundaries (content or transnetv2; runs the cut "
                                                      "job first) (new stores; default scenes).")] = None,
    cuts: Annotated[Optional[str], typer.Option(help="--clips scenes: the cut store to use or fill (default: "
                                                     "beside STORE, labels.zarr -> labels.cuts.zarr).")] = None,
    min_clip_seconds: Annotated[Optional[float], typer.Option(help="Clip stores: drop shorter clips (new stores; "
                                                                   "default 0.5).")] = None,
    max_clip_seconds: Annotated[Optional[float], typer.Option(help="Clip stores: split longer clips in equal "
                                                                   "parts (new stores; default 60).")] = None,
    frames: Annotated[Optional[int], typer.Option(help="Clip stores: frames per clip, at the middles of equal "
                                                       "parts (new stores; default 8).")] = None,
    audio_segments: Annotated[Optional[int], typer.Option(help="Clip stores: audio segments per clip (new stores; "
                                                               "default 3).")] = None,
    audio_seconds: Annotated[Optional[float], typer.Option(help="Clip stores: seconds per audio segment, mono "
                                                                "16 kHz (new stores; default 2).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16.")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Relabel the given teachers from scratch.")] = False,
    max_in_flight: Annotated[Optional[int], typer.Option(help="Units queued on the cluster at once "
                                                              "(default 2 per worker).")] = None,
    retries: Annotated[int, typer.Option(help="Extra attempts for a unit whose worker died or task failed.")] = 2,
    max_pixels: Annotated[int, typer.Option(help="Refuse images or video frames larger than this (decompression bombs).")]
    = 89_478_485,
    break_lock: Annotated[bool, typer.Option("--break-lock", help="Take over a store locked by a run on "
                                                                  "another host that is known dead.")] = False,
    repair: Annotated[bool, typer.Option("--repair", help="Verify these teachers' committed units first and "
                                                          "label the damaged ones again.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
):
    """Run teachers over CORPUS and write aligned labels to STORE. Resumes where it stopped, and retries
    samples whose recorded failure may be transient."""
    from omnimill.engine.label import LabelOptions
    from omnimill.engine.label import label as run_label

    options = LabelOptions(workers=workers, scheduler=scheduler, batch_size=batch_size, unit_size=unit_size,
                           view_size=view_size, sample_kind=sample_kind, clips=clips, cuts=cuts, fetched=fetched,
                           doc_filter=doc_filter,
                           min_clip_seconds=min_clip_seconds, max_clip_seconds=max_clip_seconds, frames=frames,
                           audio_segments=audio_segments, audio_seconds=audio_seconds,
                           device=device, dtype=dtype, force=force, max_in_flight=max_in_flight, retries=retries,
                           max_pixels=max_pixels, break_lock=break_lock, repair=repair, progress=not no_progress)
    with job(store):
        result = run_label(corpus, store, _with_options(teacher, option), options)
    samples = result.samples
    rate = samples / result.seconds if result.seconds else 0.0
    console.print(f"{result.units_done}/{result.units_planned} units, {samples} samples in "
                  f"{result.seconds:.1f}s ({rate:.1f} samples/s); {result.samples_failed} failed labels; "
                  f"{len(result.units_failed)} failed units", highlight=False)
    if result.units_repaired:
        console.print(f"repaired: {result.units_repaired} damaged units labelled again", highlight=False)
    if result.samples_retried:
        console.print(f"retried {result.samples_retried} samples whose earlier failure may have been transient",
                      highlight=False)
    if result.units_planned == 0 and not result.store_failed:
        console.print("nothing to do: every unit of these teachers is committed (use --force to relabel)")
    if result.store_failed:
        retried = result.store_failed - result.store_final
        console.print(f"completed with errors: the store holds {result.store_failed} failed labels for these "
                      f"teachers ({result.store_final} for good: the file does not decode; {retried} that the same "
                      f"command retries); see `omnimill status {store}`", highlight=False)
    raise typer.Exit(result.exit_code)


def _with_options(teachers: list[str], options: list[str]):
    """--teacher sam=ckpt --option sam.points_per_side=16 -> TeacherSpec("sam", "ckpt", {"points_per_side": 16})."""
    from omnimill.labelers.base import TeacherSpec

    specs = [TeacherSpec.parse(t) for t in teachers]
    by_name = {s.name: s for s in specs}
    for text in options:
        target, eq, value = text.partition("=")
        name, dot, key = target.rpartition(".")
        if not (eq and dot and name and key):
            raise UserError(f"--option {text!r} must look like TEACHER.KEY=VALUE (e.g. sam.points_per_side=16)")
        if name not in by_name:
            raise UserError(f"--option {text!r} names teacher {name!r}, which is not given with --teacher")
        try:
            by_name[name].options[key] = json.loads(value)
        except json.JSONDecodeError:
            by_name[name].options[key] = value
    return specs


@app.command("cuts")
def cuts_command(
    corpus: Annotated[str, typer.Argument(help="Folder of videos, WebDataset tars or a manifest; local path or "
                                               "fsspec URL.")],
    out: Annotated[str, typer.Argument(help="Cut store to create or resume (Zarr v3), e.g. cuts.zarr")],
    detector: Annotated[str, typer.Option(help="content (PySceneDetect's ContentDetector, weight-free) or "
                                               "transnetv2 (TransNetV2's shipped weights).")] = "content",
    threshold: Annotated[Optional[float], typer.Option(help="The detector's threshold (default: content 27, "
                                                            "transnetv2 0.5).")] = None,
    videos_per_unit: Annotated[Optional[int], typer.Option(help="Videos per work unit (new stores; default 4).")]
    = None,
    workers: Annotated[Optional[int], typer.Option(help="Workers of the embedded cluster.")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Join an existing Dask cluster.")] = None,
    retries: Annotated[int, typer.Option(help="Extra attempts for a unit whose worker died or task failed.")] = 2,
    force: Annotated[bool, typer.Option("--force", help="Cut again with this detector from scratch.")] = False,
    repair: Annotated[bool, typer.Option("--repair", help="Verify the detector's committed units first and cut "
                                                          "the damaged ones again.")] = False,
    break_lock: Annotated[bool, typer.Option("--break-lock", help="Take over a cut store locked by a run on "
                                                                  "another host that is known dead.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress")] = False,
):
    """Find the scene cuts of every video of CORPUS (each decoded whole at low resolution) and store them in
    OUT, for `label --clips scenes --cuts OUT`. Resumes where it stopped; a video that does not decode is
    recorded."""
    from omnimill.engine.cuts import CutOptions, detect_scene_cuts

    options = CutOptions(detector=detector, threshold=threshold, videos_per_unit=videos_per_unit, workers=workers,
                         scheduler=scheduler, retries=retries, force=force, repair=repair, break_lock=break_lock,
                         progress=not no_progress)
    with job(out):
        result = detect_scene_cuts(corpus, out, options)
    frames = sum(s.get("frames", 0) for s in result.unit_stats)
    console.print(f"{result.units_done}/{result.units_planned} units, {result.samples} videos, {frames} frames in "
                  f"{result.seconds:.1f}s; {result.samples_failed} videos did not decode; "
                  f"{len(result.units_failed)} failed units", highlight=False)
    if result.units_planned == 0 and not result.store_failed:
        console.print(f"nothing to do: every unit of {detector} is committed (use --force to cut again)")
    if result.store_failed:
        console.print(f"the store holds {result.store_failed} videos that did not decode; their clips fail as "
                      "samples when labelled", highlight=False)
    raise typer.Exit(result.exit_code)


@app.command()
def status(
    store: Annotated[str, typer.Argument(help="Label store, token store, cut store, fetched store or document store.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    errors: Annotated[int, typer.Option(help="How many errors to list per teacher.")] = 5,
):
    """Per teacher (or modality, or detector of a cut store, or fetched URLs): units done, samples ok/failed (with the first
    errors), provenance."""
    from omnimill.store.cuts import CutStore
    from omnimill.store.documents import DocumentStore
    from omnimill.store.fetched import FetchedStore
    from omnimill.store.labels import LabelStore
    from omnimill.store.tokens import TokenStore

    if CutStore.state(store) == "store":
        return _cut_status(CutStore.open(store).status(), as_json)
    if FetchedStore.state(store) == "store":
        return _fetched_status(FetchedStore.open(store).status(errors), as_json)
    if DocumentStore.state(store) == "store":
        from omnimill.documents_cli import status_command

        return status_command(store, as_json, errors)
    cls = TokenStore if TokenStore.state(store) == "store" else LabelStore
    try:
        info = cls.open(store).status(**({"max_errors": errors} if cls is LabelStore else {}))
    except UserError as e:
        fail(str(e))
    except Exception as e:  # a torn marker, a missing array: say so and what to run, never a traceback
        fail(f"{store} is damaged ({type(e).__name__}: {e}); run `omnimill verify {store}` to see where, then "
             "the same label/tokenize command with --repair", 1)
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2, default=str) + "\n")
        return
    if info["lock"]:
        lock = info["lock"]
        console.print(f"[yellow]locked by pid {lock['pid']} on {lock['host']} since {lock['since']}")
    if cls is TokenStore:
        console.print(f"[bold]{info['store']}[/bold]  from {info['source']['store']}, {info['n']} samples, "
                      f"{info['n_crops']} crops, {info['n_units']} units", highlight=False)
        table = Table("modality", "units", "ok", "skipped (not labelled)", "tokenizer")
        for name, m in info["modalities"].items():
            table.add_row(name, f"{m['units_done']}/{m['units_total']}", str(m["samples_ok"]),
                          str(m["samples_skipped"]), m["tokenizer"]["path"])
        console.print(table)
        return
    console.print(f"[bold]{info['store']}[/bold]  corpus {info['corpus']['uri']} ({info['corpus']['kind']}), "
                  f"{info['n']} samples, view {info['view_size']}px, {info['n_units']} units of "
                  f"{info['unit_size']}", highlight=False)
    table = Table("teacher", "units", "ok", "failed", "retryable", "checkpoint", "sha256")
    for name, t in info["teachers"].items():
        prov = t["provenance"]
        table.add_row(name, f"{t['units_done']}/{t['units_total']}", str(t["samples_ok"]), str(t["samples_failed"]),
                      str(t["retryable"]), str(prov.get("checkpoint") or "-"),
                      (prov.get("checkpoint_sha256") or "-")[:12])
    console.print(table)
    # A file that does not decode fails for every teacher: list it once, with the teachers it failed for.
    failures: dict[tuple, list[str]] = {}
    for name, t in info["teachers"].items():
        for e in t["first_errors"]:
            failures.setdefault((e["index"], e["key"], e["stage"], e["error"]), []).append(name)
    if failures:
        console.print("first errors:")
    for (index, key, stage, error), names in sorted(failures.items()):
        who = "all teachers" if len(names) == len(info["teachers"]) > 1 else ", ".join(names)
        console.print(f"  #{index} {key}: {stage}: {error} [{who}]", highlight=False, soft_wrap=True, markup=False)


def _fetched_status(info: dict, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2, default=str) + "\n")
        return
    console.print(f"[bold]{info['store']}[/bold]  {info['n']} URLs from {info['source'].get('uri')}, "
                  f"{info['units_done']}/{info['n_units']} units, {info['ok']} images ok "
                  f"({info['bytes'] / 1e6:.1f} MB), {info['failed']} failed ({info['retryable']} retryable)",
                  highlight=False)
    for stage, count in sorted(info["failed_by_stage"].items()):
        console.print(f"  {stage}: {count}", highlight=False)
    for e in info["first_errors"]:
        console.print(f"  {e.get('key')}: {e['stage']}: {e.get('reason', e.get('error'))}", highlight=False,
                      soft_wrap=True, markup=False)


def _cut_status(info: dict, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2, default=str) + "\n")
        return
    console.print(f"[bold]{info['store']}[/bold]  cuts of {info['corpus']['uri']}, {info['n']} videos, "
                  f"{info['n_units']} units", highlight=False)
    table = Table("detector", "units", "videos cut", "did not decode", "settings")
    for name, d in info["detectors"].items():
        table.add_row(name, f"{d['units_done']}/{d['units_total']}", str(d["ok"]), str(d["failed"]),
                      json.dumps(d["settings"]))
    console.print(table)


@app.command()
def verify(
    store: Annotated[str, typer.Argument(help="Label store, token store, cut store, fetched store, document store or shard set.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    max_problems: Annotated[int, typer.Option(help="List at most this many problems.")] = 100,
):
    """Read every chunk of every committed unit: present, decodable, `ok` agreeing with the markers,
    markers valid, every declared array there with its shape. Exit 1 on damage, naming unit, part and
    samples; `label`/`tokenize` with --repair then redo exactly the damaged units."""
    from omnimill.store.cuts import CutStore
    from omnimill.store.documents import DocumentStore
    from omnimill.store.fetched import FetchedStore
    from omnimill.store.labels import LabelStore
    from omnimill.store.tokens import TokenStore

    if max_problems < 1:
        fail(f"--max-problems must be at least 1, not {max_problems}")
    cls = next((c for c in (LabelStore, TokenStore, CutStore, FetchedStore, DocumentStore) if c.state(store) == "store"), None)
    if cls is None:  # a shard set (or nothing): the shard verifier says which
        from omnimill.shards.cli import verify as verify_shards

        return verify_shards(store, as_json=as_json, max_problems=max_problems)
    try:
        problems = cls.open(store).verify()
    except UserError as e:
        fail(str(e))
    if cls is TokenStore:  # vocabulary, key alignment with the label store
        from omnimill.shards.verify import verify as verify_tokens

        problems += [{"part": p["where"], "unit": None, "array": "", "samples": p["key"], "problem": p["reason"]}
                     for p in verify_tokens(store)["problems"]]
    if as_json:
        sys.stdout.write(json.dumps({"store": store, "kind": cls.WHAT, "problems": problems}, indent=1) + "\n")
    else:
        for p in problems[:max_problems]:
            where = " ".join(x for x in (p["part"] or "store", f"unit {p['unit']}" if p["unit"] is not None else "",
                                         p["array"], f"samples {p['samples']}" if p["samples"] else "") if x)
            console.print(f"{where}: {p['problem']}", highlight=False, soft_wrap=True, markup=False)
        console.print(f"{store}: {cls.WHAT}, {len(problems)} problems" + (
            "; run the same label/tokenize command with --repair" if problems else ""), highlight=False)
    raise typer.Exit(1 if problems else 0)


@app.command()
def teachers():
    """List the teachers and what they need."""
    from omnimill.labelers.registry import available, teacher_class

    table = Table("teacher", "checkpoint", "default checkpoint", "about")
    for name in available():
        cls = teacher_class(name)
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        table.add_row(name, "required" if cls.needs_checkpoint else "-", cls.default_checkpoint or "-", doc)
    console.print(table)
    from omnimill.corpus.kinds import kind_of, known

    for name in known():  # what `label --sample-kind` takes
        console.print(f"sample kind {name}: {', '.join(sorted(kind_of(name).extensions))}")


@app.command("tokenize")
def tokenize_command(
    labels: Annotated[str, typer.Argument(help="Label store to read.")],
    tokens: Annotated[str, typer.Argument(help="Token store to create or resume, e.g. tokens.zarr")],
    tokenizer: Annotated[list[str], typer.Option("--tokenizer", help="Tokenizer directory, repeatable.")] = [],
    crops: Annotated[Optional[int], typer.Option(help="Aligned crops per sample (new stores; crop 0 = whole "
                                                      "view; default 1).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the crops (new stores).")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Retokenize the given modalities.")] = False,
    workers: Annotated[Optional[int], typer.Option(help="Workers of the embedded cluster.")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Join an existing Dask cluster.")] = None,
    retries: Annotated[int, typer.Option(help="Extra attempts for a unit whose worker died or task failed.")] = 2,
    repair: Annotated[bool, typer.Option("--repair", help="Verify the modalities' committed units first and "
                                                          "tokenize the damaged ones again.")] = False,
    break_lock: Annotated[bool, typer.Option("--break-lock", help="Take over a token store locked by a run "
                                                                  "on another host that is known dead.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress")] = False,
):
    """Encode every modality of LABELS with trained tokenizers into the token store TOKENS. Reads only
    committed label units; refuses while LABELS is being labelled."""
    from omnimill.engine.tokenize import TokenizeOptions, tokenize

    options = TokenizeOptions(n_crops=crops, seed=seed, force=force, workers=workers, scheduler=scheduler,
                              retries=retries, repair=repair, break_lock=break_lock, progress=not no_progress)
    with job(tokens):
        result = tokenize(labels, tokens, tokenizer, options)
    console.print(f"{result.units_planned - len(result.units_failed)}/{result.units_planned} units, "
                  f"{result.samples} samples, modalities {', '.join(result.parts)} in {result.seconds:.1f}s",
                  highlight=False)
    if result.units_repaired:
        console.print(f"repaired: {result.units_repaired} damaged units tokenized again", highlight=False)
    if result.units_pending:
        console.print(f"{result.units_pending} units wait for label units that are not committed yet: finish "
                      f"labelling {labels}, then run the same command again", highlight=False)
    raise typer.Exit(result.exit_code)


def shards_text(
    corpus: Annotated[str, typer.Argument(help="Text corpus: .txt (one document per line) or .jsonl files; "
                                               "a path, glob or fsspec URL.")],
    out: Annotated[str, typer.Argument(help="Folder (or fsspec URL) for the shards and manifest.json.")],
    tokenizer: Annotated[str, typer.Option(help="A caption sequence tokenizer directory.")],
    field: Annotated[str, typer.Option(help="JSON field holding the text in .jsonl files.")] = "text",
    samples_per_shard: Annotated[int, typer.Option(help="Samples per tar.")] = 1000,
    limit: Annotated[Optional[int], typer.Option(help="Use at most this many documents.")] = None,
    force: Annotated[bool, typer.Option(help=FORCE_HELP)] = False,
):
    """Tokenize a text-only corpus into shards (for MM1-style mixtures: text, every other modality absent)."""
    from omnimill.corpus.text import read_texts
    from omnimill.engine.text import TextOptions, write_text_shards
    from omnimill.paths import positive

    options = TextOptions(samples_per_shard=samples_per_shard, force=force, progress=sys.stderr.isatty())
    with job(out):
        positive("--samples-per-shard", samples_per_shard)  # before reading the whole corpus
        keys, texts = read_texts(corpus, field, limit, out)
        result = write_text_shards(texts, keys, tokenizer, out, options)
    if result.manifest is None:
        fail(f"{len(result.units_failed) or result.store_missing} shards could not be written "
             f"({result.units_failed[0]['error'] if result.units_failed else 'no note after the run'}); "
             "run the same command again: finished shards are kept", result.exit_code)
    console.print(f"{result.manifest['n']} documents, {len(result.manifest['shards'])} shards -> {out}",
                  highlight=False)


def shards_interleave(
    documents: Annotated[str, typer.Argument(help="A document store (`omnimill documents ingest`).")],
    out: Annotated[str, typer.Argument(help="Folder (or fsspec URL) for the packed shards and manifest.json.")],
    text_tokenizer: Annotated[str, typer.Option(help="A sequence tokenizer directory (caption kind) for the text.")],
    image_tokens: Annotated[Optional[str], typer.Option(
        help="Token store of the documents' images (keys DOC/img_NN): images as their tokens.")] = None,
    image_modality: Annotated[str, typer.Option(help="The image modality in --image-tokens.")] = "rgb_image",
    slots: Annotated[Optional[int], typer.Option(
        help="Instead of tokens: this many placeholder slots per image, for a model with its own vision "
             "encoder (MM1: 144).")] = None,
    filter: Annotated[Optional[str], typer.Option(help="Keep only the documents this filter kept.")] = None,
    seq_len: Annotated[int, typer.Option(help="Tokens per packed sequence.")] = 4096,
    max_images: Annotated[int, typer.Option(help="Images per sequence at most.")] = 16,
    samples_per_shard: Annotated[int, typer.Option(help="Sequences per tar.")] = 1000,
    holdout: Annotated[float, typer.Option(
        help="Share of documents held out (by DOC_KEY), packed into their own sequences and shards.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Seed of the held-out split.")] = 0,
    captions: Annotated[str, typer.Option(
        help="Caption after each image: none, alt (its alt text), synthetic (the captioner teacher's), "
             "both (alt, newline, synthetic); the choice per image is recorded.")] = "none",
    caption_labels: Annotated[Optional[str], typer.Option(
        help="Label store of the documents' images (keys DOC/img_NN) labelled with the captioner teacher: "
             "for --captions synthetic or both.")] = None,
    workers: Annotated[Optional[int], typer.Option(
        help="Pack a part per document unit on this many Dask workers, resumable (a rerun keeps finished "
             "parts); without it, one stream in this process.")] = None,
    force: Annotated[bool, typer.Option(help=FORCE_HELP)] = False,
):
    """Pack documents into interleaved token sequences (MM1): text, then each image as BOI + its tokens (or
    placeholder slots) + EOI, EOD after each document; cut only at segment boundaries where possible
    (docs/FORMATS.md, "Interleaved shards")."""
    from omnimill.paths import positive
    from omnimill.shards.interleave import pack_store
    from omnimill.tokenize.base import load_tokenizer

    with job(out):
        for name, value in (("--seq-len", seq_len), ("--max-images", max_images),
                            ("--samples-per-shard", samples_per_shard)) + ((("--workers", workers),) if workers is not None else ()):
            positive(name, value)
        common = dict(tokens_uri=image_tokens, image_modality=image_modality, slots=slots, filter_name=filter,
                      seq_len=seq_len, max_images=max_images, samples_per_shard=samples_per_shard,
                      holdout=holdout, seed=seed, captions=captions, caption_labels=caption_labels)
        if workers is not None:
            from omnimill.engine.pack import pack_job

            result = pack_job(documents, out, text_tokenizer, workers=workers, force=force,
                              progress=sys.stderr.isatty(), **common)
            if result.manifest is None:
                fail(f"{len(result.parts_failed)} of {result.parts} parts failed "
                     f"({result.parts_failed[0]['error'] if result.parts_failed else 'no note'}); run the same "
                     "command again: finished parts are kept", result.exit_code)
            manifest = result.manifest
        else:
            manifest = pack_store(documents, out, load_tokenizer(text_tokenizer), text_tokenizer, force=force,
                                  **common)
    held = manifest.get("holdout", {}).get("n", {})
    console.print(f"{manifest['n']} sequences of {seq_len} tokens, {len(manifest['shards'])} shards, padding "
                  f"{manifest['padding_share']:.1%} ({held.get('train', 0)} train, {held.get('heldout', 0)} held out by "
                  f"document) -> {out}", highlight=False)


def _add_subcommands():
    from omnimill.audit.cli import audit_app
    from omnimill.documents_cli import documents_app
    from omnimill.fetch_cli import fetch_command
    from omnimill.shards.cli import shards_app
    from omnimill.tokenize.cli import tokenizer_app
    from omnimill.train.cli import register

    shards_app.command("text")(shards_text)  # here, not in shards/: they run a tokenizer
    shards_app.command("interleave")(shards_interleave)
    register(app)
    app.command("fetch")(fetch_command)
    app.add_typer(audit_app, name="audit")
    app.add_typer(documents_app, name="documents")
    app.add_typer(shards_app, name="shards")
    app.add_typer(tokenizer_app, name="tokenizer")


_add_subcommands()


def main():
    app()


if __name__ == "__main__":
    main()
