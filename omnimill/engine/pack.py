"""A document store packed into interleaved sequences in parts, as a resumable job on Dask (`pack_job`).

    check the inputs -> OUT's job settings (pack.json: written by the first run, matched by a rerun)
    -> one part per unit of the document store (its kept documents) -> the parts without a marker run on
    Dask (units.run_units: bounded in flight, retried, swept against the markers) -> once every part has
    its marker, shards/interleave.finish_parts writes the manifest

A part (shards/interleave.pack_part, on a worker) writes its shards part-PPPPPP-KKKKKK.tar, then its
marker part-PPPPPP.json (the part's row). A kill before the marker leaves shards that the rerun writes
again with the same bytes; a part with a marker is not packed again, so a killed job resumes where it
stopped. A rerun whose settings differ (the document store or its filter's verdicts, the tokenizer, the
image mode, seq_len, holdout, the caption rule or its label store, ...) is refused: `force` starts over.

What a part costs in padding: each part pads the last sequence of each of its two splits. A part is a
unit of the document store (DEFAULT_DOCS_PER_UNIT = 256 documents; OBELICS-like ~2 k tokens each, so
~512 k tokens = ~128 sequences of 4096): at most 2 partly padded sequences in ~128, under 1.6% of its
sequences. `pack_store` (one stream) pads only the two last sequences of the whole set.

The job keeps no lock: run one pack per OUT at a time.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import lru_cache

from omnimill import faults
from omnimill.engine.job import EXIT_OK, EXIT_UNIT_FAILURES, JobOptions, check_options
from omnimill.engine.units import run_units
from omnimill.errors import UserError
from omnimill.settings import with_overrides
from omnimill.shards import interleave as il


@dataclass
class PackTask:
    """One part: the document store unit `unit` (documents start..stop) packed into OUT with `job`."""

    out: str
    unit: int
    start: int
    stop: int
    job: dict  # the job's settings, as in OUT/pack.json
    storage_options: dict = field(default_factory=dict)
    attempt: int = 0
    workers_per_host: dict = field(default_factory=dict)


@dataclass
class PackResult:
    """What `pack_job` did: parts in all, packed by this run, failed; the manifest once every part is in."""

    out: str
    parts: int
    parts_packed: int = 0
    parts_failed: list[dict] = field(default_factory=list)  # {unit, error}: failed after every retry
    manifest: dict | None = None
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.manifest is not None else EXIT_UNIT_FAILURES


def pack_job(documents_uri: str, out: str, text_tokenizer: str, tokens_uri: str | None = None,
             image_modality: str = "rgb_image", slots: int | None = None, filter_name: str | None = None,
             seq_len: int = il.SEQ_LEN, max_images: int = il.MAX_IMAGES,
             samples_per_shard: int = il.SAMPLES_PER_SHARD, holdout: float = il.HOLDOUT, seed: int = 0,
             captions: str = "none", caption_labels: str | None = None, options: JobOptions | None = None,
             **overrides) -> PackResult:
    """Pack the document store `documents_uri` into OUT as pack_store does (same arguments; the text
    tokenizer is a directory, loaded on each worker), a part per document store unit, resuming a killed
    run. Job options (`options` / overrides): workers, scheduler, max_in_flight, retries, progress,
    local_directory, storage_options, force (start over)."""
    from omnimill.store.documents import DocumentStore
    from omnimill.tokenize.base import load_tokenizer

    began = time.time()
    opts = with_overrides(options or JobOptions(), overrides)
    check_options(opts)
    so = opts.storage_options
    il.check_inputs(documents_uri, out, tokens_uri, slots, holdout, captions, caption_labels)
    store = DocumentStore.open(documents_uri, storage_options=so)
    if not store.complete():
        raise UserError(f"{documents_uri} is not fully ingested; run `omnimill documents ingest` on it again first")
    if filter_name is not None and filter_name not in store.filters():
        raise UserError(f"{documents_uri} has no filter {filter_name!r}; it has {', '.join(store.filters()) or 'none'}")
    images = il.StoreImageTokens(tokens_uri, image_modality, so) if tokens_uri else None
    head = il.tokenizer_header(load_tokenizer(text_tokenizer), text_tokenizer, images, slots, seq_len, max_images)
    rule = il.Captions(captions, il.StoreCaptions(caption_labels, storage_options=so) if caption_labels else None)
    settings = json.loads(json.dumps({  # as pack.json holds them (lists, not tuples), to compare with a rerun's
        "documents": str(documents_uri), "documents_uuid": store.uuid, "filter": filter_name,
        "filter_settings": store.filter_settings(filter_name) if filter_name else None, "head": head,
        "tokens": tokens_uri, "image_modality": image_modality if tokens_uri else None,
        "samples_per_shard": int(samples_per_shard), "holdout": il.holdout_record(holdout, seed),
        "captions": rule.record(), "parts": store.n_units}))
    _start_or_resume(out, settings, opts.force, so)

    def missing() -> list[PackTask]:
        """The parts without a marker, as tasks."""
        units = [store.unit(u) for u in range(store.n_units) if il.read_part_row(out, u, so) is None]
        return [PackTask(out, unit.unit, unit.start, unit.stop, settings, so) for unit in units]

    result = PackResult(out, store.n_units)
    tasks = missing()
    if tasks:
        stats: dict[int, dict] = {}
        result.parts_failed = run_units(tasks, pack_unit, missing, stats, scheduler=opts.scheduler,
                                        workers=opts.workers, local_directory=opts.local_directory,
                                        max_in_flight=opts.max_in_flight, retries=opts.retries,
                                        progress=opts.progress, verb="packing")
        result.parts_packed = len(stats)
    if not result.parts_failed and not missing():
        rows = [il.read_part_row(out, u, so) for u in range(store.n_units)]
        result.manifest = il.finish_parts(out, head, rows, so, holdout, seed, rule)
    result.seconds = round(time.time() - began, 3)
    return result


def _start_or_resume(out: str, settings: dict, force: bool, storage_options: dict) -> None:
    """A new job (or `force`): OUT made ready (prepare_set) and the settings written. A rerun: the same
    settings, or a refusal naming what differs."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(out, **storage_options)
    recorded = il.read_job(out, storage_options) if fs.isdir(root) and not force else None
    if recorded is None:
        il.prepare_set(out, force, storage_options)
        il.write_job(out, settings, storage_options)
        return
    if recorded != settings:
        differ = sorted(name for name in {*recorded, *settings} if recorded.get(name) != settings.get(name))
        raise UserError(f"{out} is being packed with other settings ({', '.join(differ)} differ); run with the same "
                        "ones to resume (the same `omnimill shards interleave` flags), or pass --force to start over")


def pack_unit(task: PackTask) -> dict:
    """On a worker: pack one part, then write its marker. Returns run_units' stats (documents of the unit)."""
    job, so = task.job, task.storage_options
    images = il.StoreImageTokens(job["tokens"], job["image_modality"], so) if job["tokens"] else None
    labels = job["captions"].get("labels")
    synthetic = il.StoreCaptions(labels, job["captions"]["teacher"], so) if labels else None
    documents = il.stored_documents(job["documents"], job["filter"], so, units=[task.unit])
    row = il.pack_part(documents, task.out, task.unit, il.text_encoder(_tokenizer(job["head"]["text_tokenizer"])),
                       job["head"], images, job["samples_per_shard"], so, job["holdout"]["fraction"],
                       job["holdout"]["seed"], il.Captions(job["captions"]["rule"], synthetic))
    faults.point("unit.chunks")  # the part's shards written, its marker not yet
    il.write_part_row(task.out, row, so)
    return {"n": task.stop - task.start, "failed": {}}


@lru_cache(maxsize=4)
def _tokenizer(path: str):
    """The text tokenizer, loaded once per worker process (every part of a job uses the same one)."""
    from omnimill.tokenize.base import load_tokenizer

    return load_tokenizer(path)
