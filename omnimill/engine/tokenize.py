"""`omnimill tokenize`: a label store -> a token store, on the Dask workers, resumable like labelling.

    check tokenizers against the label store -> refuse while `label` holds the label store
    -> create the token store (keys, N crops per sample) -> lock it
    -> plan (unit, tokenizers without a marker, or whose label unit changed since) -> run units -> sweep

Each unit reads its rows of every needed field once, encodes every crop, writes one chunk per
modality and then the marker. A tokenizer added later tokenizes only its own modality; `--force`
retokenizes the given ones. Samples the teacher did not label get ok = False and pad tokens.

Only committed label units are read: a token unit whose label unit has no marker yet stays pending
(exit 3) and the next run does it. Each token marker names the label marker it was made from (its
sha256): when the label unit changes (failed samples retried, a damaged unit repaired) the token unit
is made again. A teacher relabelled from scratch (--force) has a new identity: refused, never mixed.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omnimill.engine import cluster
from omnimill.engine.units import run_units
from omnimill.errors import UserError
from omnimill.store.labels import LabelStore
from omnimill.store.tokens import TokenStore, modality_name

ENCODE_BATCH = 64  # samples per encode call inside a unit


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


@dataclass
class TokenizeResult:
    tokens: str
    modalities: list[str]
    units_planned: int = 0
    units_failed: list = field(default_factory=list)
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)
    units_pending: int = 0  # (unit, modality) pairs waiting for label units not committed yet
    units_repaired: int = 0

    @property
    def samples(self) -> int:
        return sum(s["n"] for s in self.stats.values())

    @property
    def exit_code(self) -> int:
        """4: units failed; 3: units wait for labels (run again after labelling); 0: all tokenized."""
        return 4 if self.units_failed else 3 if self.units_pending else 0


def marker_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16] if text else ""


def tokenizer_info(directory: str | Path) -> tuple[str, dict]:
    """(modality name, what the token store records about the tokenizer)."""
    from omnimill.tokenize.base import directory_hash, file_hashes, load_tokenizer

    directory = Path(directory).resolve()
    tok = load_tokenizer(directory)
    c = tok.config
    return modality_name(c.teacher, c.fields), {
        "path": str(directory), "sha256": directory_hash(directory), "files": file_hashes(directory), "kind": c.kind, "vocab_size": c.vocab_size,
        "tokens_per_sample": c.tokens_per_sample, "pad_id": c.pad_id, "teacher": c.teacher, "fields": c.fields}


def tokenize(labels: str, tokens: str, tokenizers: list[str], n_crops: int | None = None, seed: int = 0,
             force: bool = False, workers: int | None = None, scheduler: str | None = None,
             max_in_flight: int | None = None, retries: int = 2, progress: bool = True,
             torch_threads: int | None = None, repair: bool = False, break_lock: bool = False) -> TokenizeResult:
    from omnimill.tokenize.base import load_tokenizer
    from omnimill.tokenize.crops import make_crops
    from omnimill.tokenize.data import check_source, open_field

    if not tokenizers:
        raise UserError("give at least one --tokenizer DIR (made by `omnimill tokenizer train`)")
    if n_crops is not None and n_crops < 1:
        raise UserError(f"--crops must be at least 1, not {n_crops}")
    source = LabelStore.open(labels)
    busy = source.live_lock()
    if busy:  # refused, not waited for: a label run can take days, and its units are not all committed
        raise UserError(f"{labels} is being labelled by pid {busy['pid']} on {busy['host']} since {busy['since']}; "
                        "tokenize once that run has finished")
    infos = {}
    for directory in tokenizers:
        tok = load_tokenizer(directory)  # UserError for a non-tokenizer directory
        check_source(tok.config, open_field(source, _field_of(tok.config)))  # store lacks it / other shape
        name, info = tokenizer_info(directory)
        if name in infos:
            raise UserError(f"two tokenizers for {name}: give one per modality")
        info["teacher_id"] = source.teacher_id(info["teacher"]) if info["teacher"] else source.uuid
        infos[name] = info

    state = TokenStore.state(tokens)
    if state.startswith("other"):
        raise UserError(f"{tokens} is {state.removeprefix('other: ')}; give a new path for the token store")
    if state == "store":
        store = TokenStore.open(tokens, "r+")
        if not store.made_from(source):
            raise UserError(f"{tokens} was made from {store.source['store']}, not {source.uri}; "
                            "use a new token store path")
        if n_crops is not None and n_crops != store.n_crops:
            raise UserError(f"{tokens} holds {store.n_crops} crops per sample, fixed when it was created; "
                            "drop --crops or use a new token store")
    if scheduler:
        cluster.check_reachable(scheduler)  # before the token store is created
    if state != "store":
        crops = make_crops(source.keys(), source.view_size, n_crops or 1, seed)
        store = TokenStore.create(tokens, source, crops, seed)

    token = store.acquire_lock(break_lock, "tokenized")
    result = TokenizeResult(tokens, list(infos))
    started = time.time()
    try:
        for name, info in infos.items():
            store.prepare_modality(name, info, force=force)
        if repair:
            for name, units in store.damaged_units(list(infos)).items():
                if units is None:  # its arrays are damaged, not just some chunks: the modality starts over
                    store.prepare_modality(name, infos[name], force=True)
                    result.units_repaired += store.n_units
                else:
                    store.clear_markers(name, sorted(units))
                    result.units_repaired += len(units)

        def replan():
            """Tasks for units whose label unit is committed and whose tokens are missing or stale."""
            label_raw = {t: source.raw_markers(t) for t in {i["teacher"] for i in infos.values() if i["teacher"]}}
            token_markers = {name: store.markers(name) for name in infos}
            todo, pending = [], 0
            for u in range(store.n_units):
                needed = {}
                for name, info in infos.items():
                    planned = marker_hash(label_raw[info["teacher"]][u]) if info["teacher"] else ""
                    if info["teacher"] and not planned:
                        pending += 1  # the label unit is not committed: its samples are not labels yet
                        continue
                    mine = token_markers[name][u]
                    if mine is None or mine.get("label_marker", planned) != planned:
                        needed[info["path"]] = planned
                if needed:
                    unit = store.unit(u)
                    todo.append(TokenizeTask(tokens, labels, u, unit.start, unit.stop, list(needed), 0, torch_threads,
                                             label_markers=needed))
            result.units_pending = pending
            return todo

        tasks = replan()
        result.units_planned = len(tasks)
        if tasks:
            result.units_failed = run_units(tasks, tokenize_unit, replan, result.stats, scheduler=scheduler,
                                            workers=workers, max_in_flight=max_in_flight, retries=retries,
                                            progress=progress, verb="tokenizing")
    finally:
        result.seconds = time.time() - started
        try:
            store.append_run({"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                              "seconds": round(result.seconds, 2), "host": socket.gethostname(), "pid": os.getpid(),
                              "modalities": result.modalities, "units_planned": result.units_planned,
                              "units_failed": result.units_failed, "units_pending": result.units_pending,
                              "units_repaired": result.units_repaired, "force": force,
                              "scheduler": scheduler or "embedded"})
        finally:
            store.release_lock(token)
    return result


def _field_of(config) -> str:
    if not config.teacher:
        return config.fields[0]
    return f"{config.teacher}/{config.fields[0]}" if len(config.fields) == 1 else config.teacher


def tokenize_unit(task: TokenizeTask) -> dict:
    """Worker side: encode every crop of the unit's samples with each tokenizer, write, then mark."""
    import sys

    from omnimill.engine.runtime import cached, torch_threads, undo_dask_malloc_trim, worker_address
    from omnimill.tokenize.base import load_tokenizer
    from omnimill.tokenize.data import open_field

    t0 = time.perf_counter()
    cached(("malloc",), undo_dask_malloc_trim)
    labels = cached(("labels", task.labels), lambda: LabelStore.open(task.labels))
    store = cached(("tokens", task.tokens), lambda: TokenStore.open(task.tokens, "r+"))
    crops = store.group["crops"][task.start:task.stop]
    n = task.stop - task.start
    unit = store.unit(task.unit)
    failed = {}
    for directory in task.tokenizers:
        tok = cached(("tokenizer", directory, os.path.getmtime(Path(directory) / "config.json")),
                      lambda d=directory: load_tokenizer(d).to("auto"))
        if "torch" in sys.modules:
            import torch

            torch.set_num_threads(torch_threads(task.torch_threads, task.workers_per_host))
        name = modality_name(tok.config.teacher, tok.config.fields)
        label_marker = marker_hash(labels.raw_markers(tok.config.teacher)[task.unit]) if tok.config.teacher else ""
        if label_marker != task.label_markers.get(directory, label_marker):
            raise RuntimeError(f"label unit {task.unit} of {tok.config.teacher} changed since it was planned")
        if tok.config.teacher and not labels.unit_intact(tok.config.teacher, task.unit):
            raise RuntimeError(f"label unit {task.unit} of {tok.config.teacher} is damaged (a chunk is missing or "
                               f"does not decode): run `omnimill verify {task.labels}`, then label with --repair")
        source = open_field(labels, _field_of(tok.config))
        ok = source.ok()[task.start:task.stop]
        rows = np.flatnonzero(ok)
        group = labels.group[source.teacher] if source.teacher else labels.group
        values = {f: group[f][task.start:task.stop][rows] for f in source.fields}
        pad = tok.config.pad_id if tok.config.pad_id >= 0 else 0
        tokens = np.full((n, store.n_crops, tok.tokens_per_sample), pad, np.int64)
        for i in range(0, len(rows), ENCODE_BATCH):
            batch = {f: v[i:i + ENCODE_BATCH] for f, v in values.items()}
            for c in range(store.n_crops):
                tokens[rows[i:i + ENCODE_BATCH], c] = tok.encode(batch, crops[rows[i:i + ENCODE_BATCH], c])
        marker = {"unit": task.unit, "start": task.start, "stop": task.stop, "ok": int(len(rows)),
                  "label_marker": label_marker,
                  "skipped": int(n - len(rows)), "attempt": task.attempt, "worker": worker_address(),
                  "host": socket.gethostname(), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        store.write_unit(name, unit, tokens, ok, marker)
        failed[name] = 0  # samples without labels are skipped, not failures: the label store records why
    return {"unit": task.unit, "n": n, "failed": failed, "seconds": time.perf_counter() - t0}
