"""`omnimill shards text`: a text-only corpus -> token shards with one modality, as a unit job.

    check the tokenizer (a caption sequence tokenizer) and OUT -> prepare OUT (shards/wds.open_set; the
    plan names the texts by a hash of keys and texts) -> units of `samples_per_shard` texts, one shard
    each -> run and sweep on the job runner (job.py, Dask) -> the manifest, last

Unit u is shard u, texts [u * S, (u + 1) * S): the worker tokenizes them, writes the tar and its offset
index (shards/wds.write_shard), then notes the shard in OUT/_export/: that note is the unit's commit
marker, so a killed run's rerun does only the shards not noted. For MM1-style mixtures: these samples
have text and nothing else, and the loader marks every other modality absent.

The embedded cluster runs threads in this process (`PROCESSES = False`): a unit is milliseconds of
tokenizing and one write, less than starting a worker process that imports the tokenizer. `--scheduler`
(the Python API's `scheduler`) runs the units on a cluster of your own as any job does.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omnimill import __version__
from omnimill.engine.job import JobOptions, JobResult, UnitJob, check_options, run_planned, with_overrides
from omnimill.engine.tokenize import tokenizer_info
from omnimill.errors import UserError
from omnimill.paths import positive, refuse_overlap
from omnimill.shards.wds import FORMAT, finish_set, note_shard, noted_shards, open_set, write_shard
from omnimill.store.base import now
from omnimill.store.tokens import modality_name

ENCODE_BATCH = 256  # texts per encode call inside a unit


@dataclass
class TextOptions(JobOptions):
    """The job's settings (workers, scheduler, retries, force, ...) and the shard size."""

    samples_per_shard: int = 1000  # texts per shard = per unit


@dataclass
class TextResult(JobResult):
    manifest: dict | None = None  # once every shard is written


@dataclass
class TextTask:
    out: str
    unit: int  # = the shard's number
    start: int
    stop: int
    keys: list[str]
    texts: list[str]
    tokenizer: str  # directory
    dtype: str  # of the token rows: uint16 when the vocabulary fits
    storage_options: dict = field(default_factory=dict)
    attempt: int = 0
    workers_per_host: dict = field(default_factory=dict)


def write_text_shards(texts: list[str], keys: list[str], tokenizer_dir: str, out: str,
                      options: TextOptions | None = None, **overrides) -> TextResult:
    """Tokenize `texts` (with their `keys`) with a caption sequence tokenizer into the shard set OUT.
    Resumable: the same call after a kill writes only the shards that are not noted as finished."""
    from omnimill.tokenize.base import load_tokenizer

    opts = with_overrides(options or TextOptions(), overrides)
    positive("--samples-per-shard", opts.samples_per_shard)
    check_options(opts)
    if not texts:
        raise UserError("the corpus holds no text (every line is blank); nothing to write")
    refuse_overlap(out, {"the tokenizer": str(tokenizer_dir)})
    tok = load_tokenizer(tokenizer_dir)
    if tok.config.kind != "sequence" or tok.config.fields != ["caption"]:
        raise UserError(f"{tokenizer_dir} is a {tok.config.kind} tokenizer of {tok.config.fields}; text corpora "
                        f"need a caption sequence tokenizer (`omnimill tokenizer train LABELS caption ...`)")
    name, info = tokenizer_info(tokenizer_dir, tok)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 65536 else np.int32).name
    digest = hashlib.sha256()
    for key, text in zip(keys, texts):
        digest.update(f"{key}\0{text}\0".encode())
    plan = {"texts": digest.hexdigest(), "tokenizer": info["sha256"], "samples_per_shard": opts.samples_per_shard}
    open_set(out, plan, opts.force, opts.storage_options)

    job = TextShardsJob(out, name, texts, keys, info["path"], dtype, opts)
    result = TextResult(out, [name])
    clock = time.time()
    run_planned(job, result)
    result.seconds = time.time() - clock
    if not result.exit_code:
        noted = noted_shards(out, opts.storage_options)
        result.manifest = {
            "format": FORMAT, "omnimill_version": __version__, "created": now(), "source": {"text": len(texts)},
            "n": len(texts), "n_crops": 1, "modalities": {name: {**info, "dtype": dtype, "samples": len(texts)}},
            "shards": [noted[u] for u in range(job.n_units)]}
        finish_set(out, result.manifest, opts.storage_options)
    return result


def write_text_unit(task: TextTask) -> dict:
    """Worker side: tokenize the unit's texts, write its shard (tar + index), then note it (the commit)."""
    from omnimill.engine.runtime import cached
    from omnimill.tokenize.base import load_tokenizer

    t0 = time.perf_counter()
    tok = cached(("tokenizer", task.tokenizer, os.path.getmtime(Path(task.tokenizer) / "config.json")),
                 lambda: load_tokenizer(task.tokenizer))
    name = modality_name(tok.config.teacher, tok.config.fields)
    samples = []
    for i in range(0, len(task.texts), ENCODE_BATCH):
        ids = tok.encode({"caption": np.array(task.texts[i:i + ENCODE_BATCH], dtype=object)})
        for j, row in enumerate(ids):
            samples.append((task.keys[i + j], task.start + i + j, np.zeros((1, 5), np.int32),
                            {name: row[None].astype(task.dtype)}))
    note_shard(task.out, write_shard(task.out, task.unit, samples, task.storage_options), task.storage_options)
    n = task.stop - task.start
    return {"unit": task.unit, "n": n, "ok": {name: n}, "failed": {name: 0}, "seconds": time.perf_counter() - t0}


class TextShardsJob(UnitJob):
    VERB, PARTS = "tokenizing", "modalities"
    PROCESSES = False  # see the module docstring
    work = staticmethod(write_text_unit)

    def __init__(self, out: str, name: str, texts: list[str], keys: list[str], tokenizer: str, dtype: str,
                 options: TextOptions):
        super().__init__(None, [name], options)
        self.out, self.texts, self.keys, self.tokenizer, self.dtype = out, texts, keys, tokenizer, dtype
        self.per_unit = options.samples_per_shard
        self.n_units = -(-len(texts) // self.per_unit)

    def plan(self, result: JobResult, sweep: bool) -> list[TextTask]:
        """A task for every shard that is not noted as finished."""
        noted = noted_shards(self.out, self.options.storage_options)
        tasks = []
        for u in range(self.n_units):
            if u not in noted:
                start, stop = u * self.per_unit, min(len(self.texts), (u + 1) * self.per_unit)
                tasks.append(TextTask(self.out, u, start, stop, self.keys[start:stop], self.texts[start:stop],
                                      self.tokenizer, self.dtype, self.options.storage_options))
        return tasks

    def tally(self, result: JobResult) -> None:
        result.store_missing = len(set(range(self.n_units)) - set(noted_shards(self.out, self.options.storage_options)))
