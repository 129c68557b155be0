"""`omnimill documents ingest CORPUS OUT` and `omnimill documents filter STORE`: the commands of the document
store (engine/documents.py, engine/document_filters.py). Thin: parse, call, print; `filter --near-dups` asks
the auditor (audit/dups.py) for the index's near-duplicate groups and hands them to the engine.

cli.py adds `documents_app` as the `documents` group; `python -m omnimill.documents_cli ingest ...` runs it
alone. Exit codes of ingest as every job's: 0 every document parsed; 3 some documents are malformed (each
recorded with its stage and reason); 4 units failed or lack a marker; 2 wrong input.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console

from omnimill.errors import UserError, fail

console = Console()
documents_app = typer.Typer(help="Interleaved image-text documents: ingest a corpus, filter it.", no_args_is_help=True,
                            pretty_exceptions_enable=False, add_completion=False)


@documents_app.command("ingest")
def ingest_command(
    corpus: Annotated[str, typer.Argument(help="OBELICS-style .parquet, MMC4-style .jsonl or WebDataset .tar "
                                               "documents (brace ranges, globs); local path or fsspec URL.")],
    out: Annotated[str, typer.Argument(help="Document store to create or resume, e.g. documents.zarr")],
    docs_per_unit: Annotated[Optional[int], typer.Option(help="Documents per work unit (new stores; default 256).")]
    = None,
    workers: Annotated[Optional[int], typer.Option(help="Workers of the embedded cluster.")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Join an existing Dask cluster.")] = None,
    unit_retries: Annotated[int, typer.Option(help="Extra attempts for a unit whose task failed.")] = 2,
    force: Annotated[bool, typer.Option("--force", help="Ingest every document again.")] = False,
    repair: Annotated[bool, typer.Option("--repair", help="Verify the committed units first and redo the damaged "
                                                          "ones.")] = False,
    break_lock: Annotated[bool, typer.Option("--break-lock", help="Take over a store locked by a run on another "
                                                                  "host that is known dead.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress")] = False,
):
    """Read every document of CORPUS into OUT: its ordered segments, metadata and image table; malformed
    documents recorded with their reasons. Then the image lists: a URL list for `omnimill fetch`, the local
    images as a corpus for `omnimill label` (keys DOC_KEY/img_NN)."""
    from omnimill.engine.documents import IngestOptions, ingest_documents

    options = IngestOptions(docs_per_unit=docs_per_unit, workers=workers, scheduler=scheduler, retries=unit_retries,
                            force=force, repair=repair, break_lock=break_lock, progress=not no_progress)
    try:
        done = ingest_documents(corpus, out, options)
    except UserError as e:
        fail(str(e))
    result = done.result
    images = sum(s.get("images", 0) for s in result.unit_stats)
    console.print(f"{result.units_done}/{result.units_planned} units, {result.samples} documents ({images} images) "
                  f"in {result.seconds:.1f}s; the store holds {result.store_failed} malformed documents; "
                  f"{len(result.units_failed)} failed units", highlight=False, soft_wrap=True)
    if done.url_list:
        console.print(f"URL images: omnimill fetch {done.url_list} FETCHED.zarr", highlight=False, soft_wrap=True)
    if done.local_corpus:
        console.print(f"local images: omnimill label '{done.local_corpus}' LABELS.zarr", highlight=False,
                      soft_wrap=True)
    raise typer.Exit(result.exit_code)


@documents_app.command("filter")
def filter_command(
    store: Annotated[str, typer.Argument(help="A document store made by `omnimill documents ingest`.")],
    name: Annotated[str, typer.Option(help="The filter's name: its verdicts are the part filter_<name>.")]
    = "default",
    min_images: Annotated[Optional[int], typer.Option(help="Drop documents with fewer images.")] = None,
    max_images: Annotated[Optional[int], typer.Option(help="Drop documents with more images.")] = None,
    min_chars: Annotated[Optional[int], typer.Option(help="Drop documents with fewer text characters.")] = None,
    min_side: Annotated[Optional[int], typer.Option(help="Drop documents with an image whose shorter side is "
                                                         "smaller (or whose size is unknown), in pixels.")] = None,
    min_sim: Annotated[Optional[float], typer.Option(help="Drop documents with an image whose corpus image-text "
                                                          "similarity (MMC4 matched_sim) is lower or missing; "
                                                          "MMC4 used 0.15.")] = None,
    dedup: Annotated[bool, typer.Option("--dedup", help="Drop documents holding an image (same sha256) that an "
                                                        "earlier document holds.")] = False,
    fetched: Annotated[Optional[str], typer.Option(help="Fetched store of the URL images (sizes, hashes).")] = None,
    labels: Annotated[Optional[str], typer.Option(help="Label store of the images with the metadata teacher "
                                                       "(sizes).")] = None,
    clip_labels: Annotated[Optional[str], typer.Option(help="Label store of the images (keys DOC_KEY/img_NN) with "
                                                            "the clip teacher, for --min-clip-sim.")] = None,
    min_clip_sim: Annotated[Optional[float], typer.Option(help="Drop documents with an image whose CLIP cosine with "
                                                               "its neighbouring text (the better of the text "
                                                               "before and after) is lower, or that has no "
                                                               "embedding or no text; the checkpoint that "
                                                               "labelled --clip-labels embeds the text.")] = None,
    near_dups: Annotated[Optional[str], typer.Option(help="An `omnimill audit index` of the documents' image label "
                                                          "store: drop documents holding a near-duplicate of an "
                                                          "earlier document's image.")] = None,
    near_threshold: Annotated[float, typer.Option(help="Cosine at which two images are near-duplicates "
                                                       "(--near-dups).")] = 0.95,
    device: Annotated[str, typer.Option(help="Where the CLIP text tower runs (--min-clip-sim): auto, cpu, "
                                             "cuda.")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Replace a filter of this name run with other "
                                                        "settings.")] = False,
):
    """Judge every document: kept, or the first check it fails. Recorded per document with the settings."""
    from omnimill.engine.document_filters import FilterSettings, NearDuplicates, filter_documents

    settings = FilterSettings(min_images=min_images, max_images=max_images, min_chars=min_chars, min_side=min_side,
                              min_sim=min_sim, dedup=dedup, fetched=fetched, labels=labels, clip_labels=clip_labels,
                              min_clip_sim=min_clip_sim, near_dups=near_dups,
                              near_threshold=near_threshold if near_dups else None)
    try:
        near = None
        if near_dups:
            from omnimill.audit.dups import find_duplicates

            groups, info = find_duplicates(near_dups, near_threshold)
            near = NearDuplicates([group.keys for group in groups], info)
        done = filter_documents(store, name, settings, force, near=near, device=device)
    except UserError as e:
        fail(str(e))
    dropped = ", ".join(f"{check} {n}" for check, n in sorted(done["dropped_by"].items())) or "none"
    console.print(f"{done['kept']}/{done['n']} documents kept (filter_{name}); dropped: {dropped}", highlight=False,
                  soft_wrap=True)


@documents_app.command("status")
def status_command(
    store: Annotated[str, typer.Argument(help="A document store.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    errors: Annotated[int, typer.Option(help="How many malformed documents to list.")] = 5,
):
    """Units ingested, documents parsed and malformed (the first few with their reasons), each filter's kept."""
    import json

    from omnimill.store.documents import DocumentStore

    try:
        info = DocumentStore.open(store).status(errors)
    except UserError as e:
        fail(str(e))
    if as_json:
        print(json.dumps(info, indent=2, default=str))
        return
    console.print(f"{info['store']}  corpus {info['corpus']['uri']} ({info['corpus']['form']}), {info['n']} documents; "
                  f"units {info.get('units_done', 0)}/{info['n_units']}, {info.get('ok', 0)} parsed, "
                  f"{info.get('malformed', 0)} malformed", highlight=False, soft_wrap=True)
    for e in info.get("first_errors", []):
        console.print(f"  {e['key']}: {e['stage']}: {e['error']}", highlight=False, soft_wrap=True, markup=False)
    for name, f in info["filters"].items():
        console.print(f"  filter_{name}: {f['kept']} kept", highlight=False)


if __name__ == "__main__":
    documents_app()
