"""`omnimill tokenize`: a label store -> a token store, on the Dask workers, resumable like labelling.

    check tokenizers against the label store -> refuse while `label` holds the label store
    -> create the token store (keys, N crops per sample) -> the unit job (job.py: lock, repair, plan,
    run, sweep, record, unlock)

What tokenizing adds to the job: its checks, its planning (per unit, the tokenizers without a marker, or
whose label unit changed since) and the worker function `tokenize_unit`. Each unit reads its rows of
every needed field once, encodes every crop, writes one chunk per modality and then the marker. A
tokenizer added later tokenizes only its own modality; `--force` retokenizes the given ones. Samples
the teacher did not label get ok = False and pad tokens.

Clip stores: a per-frame field (N, T, ...) is tokenized frame by frame, every frame of a clip through the
clip's crop, into one time-major row of T x L tokens (tokenize/data.py); the modality's group records its time
axis {"steps": T, "of": "frames"} beside the tokenizer (store/tokens.py), as it does what a tokenizer declares
for a field it reads whole (the audio tokenizer's K audio segments). Per-clip fields (embeddings, transcripts,
captions) are tokenized like an image's per-sample fields, without a time axis.

Only committed label units are read: a token unit whose label unit has no marker yet stays pending
(exit 3) and the next run does it. Each token marker names the label marker it was made from (its
sha256): when the label unit changes (failed samples retried, a damaged unit repaired) the token unit
is made again. A teacher relabelled from scratch (--force) has a new identity: refused, never mixed.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omnimill.engine import cluster
from omnimill.engine.job import JobOptions, JobResult, UnitJob, at_least_one, check_options, run_job, with_overrides
from omnimill.errors import UserError
from omnimill.store.base import now
from omnimill.store.labels import LabelStore
from omnimill.store.tokens import TokenStore, modality_name

ENCODE_BATCH = 64  # samples per encode call inside a unit

TokenizeResult = JobResult  # the name tokenize's callers know


@dataclass
class TokenizeOptions(JobOptions):
    """The job's settings (workers, scheduler, retries, ...) and tokenizing's own."""

    n_crops: int | None = None  # aligned crops per sample, fixed when the token store is created (default 1)
    seed: int = 0  # seed of the crops (new stores)


@dataclass
class TokenizeTask:
    tokens: str
    labels: str
    unit: int
    start: int
    stop: int
    tokenizers: list[str]  # directories
    attempt: int = 0
    torch_threads: int | None = None
    workers_per_host: dict = field(default_factory=dict)
    label_markers: dict = field(default_factory=dict)  # directory -> sha256 of the label marker planned from
    storage_options: dict = field(default_factory=dict)
    run: str = ""  # the run (job.py): a worker keeps one token store object, with its write handles, per run


def marker_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16] if text else ""


def tokenizer_info(directory: str | Path, tok=None, tokens_per_sample: int | None = None) -> tuple[str, dict]:
    """(modality name, what a token store or shard manifest records about the tokenizer): the one place
    this is made. `tok`: the tokenizer, if already loaded from `directory`. `tokens_per_sample`: the length of
    a row in the store when it is not the tokenizer's own (T frames x the tokenizer's L for a clip's frames)."""
    from omnimill.tokenize.base import directory_hash, file_hashes, load_tokenizer

    directory = Path(directory).resolve()
    c = (tok or load_tokenizer(directory)).config
    return modality_name(c.teacher, c.fields), {
        "path": str(directory), "sha256": directory_hash(directory), "files": file_hashes(directory),
        "kind": c.kind, "vocab_size": c.vocab_size, "tokens_per_sample": tokens_per_sample or c.tokens_per_sample,
        "pad_id": c.pad_id, "teacher": c.teacher, "fields": c.fields}


def tokenize(labels: str, tokens: str, tokenizers: list[str], options: TokenizeOptions | None = None,
             **overrides) -> JobResult:
    """Encode the label store `labels` with the tokenizer directories `tokenizers` into the token store `tokens`."""
    from omnimill.tokenize.base import load_tokenizer
    from omnimill.tokenize.crops import make_crops
    from omnimill.tokenize.data import check_source, open_field, row_length, time_axis

    opts = with_overrides(options or TokenizeOptions(), overrides)
    if not tokenizers:
        raise UserError("give at least one --tokenizer DIR (made by `omnimill tokenizer train`)")
    at_least_one(opts, {"n_crops": "--crops"})
    check_options(opts)
    source = LabelStore.open(labels, storage_options=opts.storage_options)
    busy = source.live_lock()
    if busy:  # refused, not waited for: a label run can take days, and its units are not all committed
        raise UserError(f"{labels} is being labelled by pid {busy['pid']} on {busy['host']} since {busy['since']}; "
                        "tokenize once that run has finished")
    infos, times = {}, {}
    for directory in tokenizers:
        tok = load_tokenizer(directory)  # UserError for a non-tokenizer directory
        field = open_field(source, tok.config.modality)
        check_source(tok.config, field)  # store lacks it / other shape
        name, info = tokenizer_info(directory, tok, row_length(tok, field))
        if name in infos:
            raise UserError(f"two tokenizers for {name}: give one per modality")
        info["teacher_id"] = source.teacher_id(info["teacher"]) if info["teacher"] else source.uuid
        infos[name], times[name] = info, time_axis(tok, field)

    state = TokenStore.state(tokens, opts.storage_options)
    if state.startswith("other"):
        raise UserError(f"{tokens} is {state.removeprefix('other: ')}; give a new path for the token store")
    if state == "store":
        store = TokenStore.open(tokens, "r+", opts.storage_options)
        if not store.made_from(source):
            raise UserError(f"{tokens} was made from {store.source['store']}, not {source.uri}; "
                            "use a new token store path")
        if opts.n_crops is not None and opts.n_crops != store.n_crops:
            raise UserError(f"{tokens} holds {store.n_crops} crops per sample, fixed when it was created; "
                            "drop --crops or use a new token store")
    if opts.scheduler:
        cluster.check_reachable(opts.scheduler)  # before the token store is created
    if state != "store":
        crops = make_crops(source.keys(), source.view_size, opts.n_crops or 1, opts.seed)
        store = TokenStore.create(tokens, source, crops, opts.seed, opts.storage_options)
    return run_job(TokenizeJob(store, source, infos, opts, times))


def tokenize_unit(task: TokenizeTask) -> dict:
    """Worker side: encode every crop of the unit's samples with each tokenizer, write, then mark."""
    import sys

    from omnimill.engine.runtime import cached, torch_threads, undo_dask_malloc_trim, unit_marker
    from omnimill.tokenize.base import load_tokenizer
    from omnimill.tokenize.data import encode_samples, open_field, row_length

    t0 = time.perf_counter()
    cached(("malloc",), undo_dask_malloc_trim)
    labels = cached(("labels", task.labels), lambda: LabelStore.open(task.labels, storage_options=task.storage_options))
    store = cached(("tokens", task.tokens, task.run), lambda: TokenStore.open(task.tokens, "r+", task.storage_options))
    span = slice(task.start, task.stop)
    crops = store.read("crops", span)
    n = task.stop - task.start
    unit = store.unit(task.unit)
    failed, done = {}, {}
    for directory in task.tokenizers:
        tok = cached(("tokenizer", directory, os.path.getmtime(Path(directory) / "config.json")),
                     lambda d=directory: load_tokenizer(d).to("auto"))
        if "torch" in sys.modules:
            import torch

            torch.set_num_threads(torch_threads(task.torch_threads, task.workers_per_host))
        name = modality_name(tok.config.teacher, tok.config.fields)
        # its own marker only: the whole marker array per unit is n_units² reads in a run (782² at 100k samples)
        label_marker = marker_hash(labels.raw_marker(tok.config.teacher, task.unit)) if tok.config.teacher else ""
        if label_marker != task.label_markers.get(directory, label_marker):
            raise RuntimeError(f"label unit {task.unit} of {tok.config.teacher} changed since it was planned")
        if tok.config.teacher and not labels.unit_intact(tok.config.teacher, task.unit):
            raise RuntimeError(f"label unit {task.unit} of {tok.config.teacher} is damaged (a chunk is missing or "
                               f"does not decode): run `omnimill verify {task.labels}`, then label with --repair")
        source = open_field(labels, tok.config.modality)
        # this unit's rows only: reading the whole `ok` (n_units chunks) per unit is n_units² reads in a run
        ok = labels.read(source.path("ok"), span) if source.teacher else np.ones(n, bool)
        rows = np.flatnonzero(ok)
        values = {f: labels.read(source.path(f), span)[rows] for f in source.fields}
        pad = tok.config.pad_id if tok.config.pad_id >= 0 else 0
        tokens = np.full((n, store.n_crops, row_length(tok, source)), pad, np.int64)
        step = max(1, ENCODE_BATCH // source.frames)  # a clip's T frames are encoded at once: as many frames as images
        for i in range(0, len(rows), step):
            batch = {f: v[i:i + step] for f, v in values.items()}
            for c in range(store.n_crops):
                tokens[rows[i:i + step], c] = encode_samples(tok, source, batch, crops[rows[i:i + step], c])
        marker = {**unit_marker(task, ok=int(len(rows)), skipped=int(n - len(rows)), label_marker=label_marker),
                  "finished": now()}
        store.write_unit(name, unit, tokens, ok, marker)
        failed[name] = 0  # samples without labels are skipped, not failures: the label store records why
        done[name] = int(len(rows))
    return {"unit": task.unit, "n": n, "ok": done, "failed": failed, "seconds": time.perf_counter() - t0}


class TokenizeJob(UnitJob):
    VERB, LOCKED_AS, PARTS = "tokenizing", "tokenized", "modalities"
    work = staticmethod(tokenize_unit)

    def __init__(self, store: TokenStore, source: LabelStore, infos: dict[str, dict], options: TokenizeOptions,
                 times: dict[str, dict | None] | None = None):
        super().__init__(store, list(infos), options)
        self.source, self.infos, self.times = source, infos, times or {}

    def prepare(self, part: str, force: bool) -> None:
        self.store.prepare_modality(part, self.infos[part], force=force, time=self.times.get(part))

    def tally(self, result: JobResult) -> None:
        """Nothing to add: a token unit has no failed samples (a sample whose labels failed is skipped), and a
        unit not tokenized because its labels are not committed yet is counted by the plan as pending (exit
        3, the next run does it), not as missing (exit 4, a unit that failed)."""

    def plan(self, result: JobResult, sweep: bool) -> list[TokenizeTask]:
        """Tasks for units whose label unit is committed and whose tokens are missing or stale."""
        teachers = {i["teacher"] for i in self.infos.values() if i["teacher"]}
        label_raw = {t: self.source.raw_markers(t) for t in teachers}
        token_markers = {name: self.store.markers(name) for name in self.infos}
        todo, pending = [], 0
        remade: dict[str, list[int]] = {name: [] for name in self.infos}  # committed units made again
        for u in range(self.store.n_units):
            needed = {}
            for name, info in self.infos.items():
                planned = marker_hash(label_raw[info["teacher"]][u]) if info["teacher"] else ""
                if info["teacher"] and not planned:
                    pending += 1  # the label unit is not committed: its samples are not labels yet
                    continue
                mine = token_markers[name][u]
                if mine is None or mine.get("label_marker", planned) != planned:
                    needed[info["path"]] = planned
                    if mine is not None:
                        remade[name].append(u)
            if needed:
                unit = self.store.unit(u)
                todo.append(TokenizeTask(self.store.uri, self.source.uri, u, unit.start, unit.stop, list(needed), 0,
                                         self.options.torch_threads, label_markers=needed,
                                         storage_options=self.options.storage_options, run=self.run))
        # Their markers will be replaced: out of the unit summary first, or it would keep the old rows
        # (summarize reads again only units it does not hold; store/summary.py)
        for name, units in remade.items():
            self.store.unsummarize(name, units)
        result.units_pending = pending
        return todo
