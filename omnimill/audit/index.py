"""FAISS index over one embedding field of a label store: `omnimill audit index STORE --field TEACHER/FIELD`.

    store ──ok rows of TEACHER/FIELD──▶ L2-normalise ──▶ choose_index(N, dim, budget, latency) ──▶ train, add
      │   (a row: a sample, or a frame of a clip)
      └──2 x 1000 random indexed rows as queries ──▶ exact top-10 (same pass) ──▶ tune nprobe / efSearch
             on 1000 of them, measure recall on the other 1000 ──▶ index.faiss, ids.npy, keys.npy, info.json

Metric: inner product on L2-normalised vectors, i.e. cosine similarity (1 = same direction). Every score
this package shows is that cosine; "distance" is 1 - cosine.

The index type follows N, the dimension, the memory budget and a latency target (`choose_index`, a plain
function so its choices can be tested at any scale):

    flat     exact search: the vectors fit the budget and one scan of N x dim floats meets the latency target
    hnsw     graph search (HNSW32): vectors + graph fit, and N <= HNSW_MAX_N (its build is slow beyond that)
    ivf      inverted lists over k-means cells (IVF-Flat): the raw vectors fit, but a scan of all is too slow
    ivfpq    IVF with product-quantised codes: the raw vectors do not fit; PQ bytes per vector are the most
             that fit the budget

Search parameters (nprobe for IVF, efSearch for HNSW) are tuned on held-out queries: the smallest setting
whose recall@10 against exact search reaches TARGET_RECALL with p99 single-query latency under the target.
The recall recorded in info.json is then measured on a second set of held-out queries, disjoint from the
tuning set (both sets' sample indices are in info.json's `query_samples`).
The queries are indexed samples (that is what `audit query --key` asks), each with itself removed from both
its exact and its approximate neighbour lists, so recall is about the other ten, never the trivial self-match.

What is indexed: one vector per sample of a (N, D) float field (an image's embedding, or a clip's as
clap/embedding), or, for a frame teacher's (N, T, D) field of a clip store (dinov2/cls, clip/embedding on
frames), one vector per frame: a row is (clip, t), so a query can answer "which moment" and not only
"which clip" (pooling the T frames per clip would lose that; a key query without --frame still asks with
the clip's mean frame, audit/query.py). `FieldRows` reads either as rows; ids map back to (clip, t).

The directory:
    index.faiss   faiss.write_index of the CPU index (moved to a GPU at load time when one is there)
    ids.npy       (M,) int64: FAISS id -> sample index in the store (only samples with ok = True and a
                  non-zero vector are indexed; e.g. clip/text_embedding is zero where there is no caption,
                  and a frame of a clip without video is zero)
    frames.npy    (M,) int32: FAISS id -> frame t of its clip; per-frame indexes only (info.json `unit` =
                  "frame"; else `unit` is the store's sample kind, "image" or "clip")
    keys.npy      (M,) unicode: FAISS id -> sample key
    info.json     written last (a directory without it is an interrupted build): store and corpus URI, the
                  store's `created` and the teacher's provenance as fingerprints, field, metric, type, factory
                  string, chosen parameters, measured recall@10 / p50 / p99, memory, build time, versions
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omnimill import __version__
from omnimill.errors import UserError
from omnimill.files import write_atomic
from omnimill.store.labels import LabelStore

FORMAT = "omnimill.audit-index/1"
DEFAULT_BUDGET = "4GB"
DEFAULT_LATENCY_MS = 10.0  # p99 of one query: interactive for an auditor
TARGET_RECALL = 0.99  # recall@10 against exact search that tuning aims for (the smallest setting reaching it)
K = 10  # recall@K is measured and tuned for
QUERIES = 1000  # held-out queries for recall (and as many others for tuning); latency: one query at a time
SWEEP_LATENCY_QUERIES = 200  # single queries timed per candidate setting while tuning
# Flat search speed, vector components scanned per second by one query. Measured 5e9/s with faiss on
# this project's 2-core CI machine (100k x 768 in ~15 ms); taken lower so "flat meets the target" holds
# on a busy machine: 10 ms x 4e9/s = 40M components = 52k vectors of 768.
FLAT_RATE = 4e9
HNSW_M = 32  # graph degree: 2 x 32 neighbours x 4 B = 256 B per vector at level 0
HNSW_EF_CONSTRUCTION = 40  # faiss's default; 100k x 768 builds in ~40 s on 2 cores
HNSW_MAX_N = 300_000  # beyond this IVF builds much faster (HNSW ~superlinear: 1M x 768 takes ~10 min on 2 cores)
MIN_PQ_N = 1_000  # PQ codebooks need >= 256 training vectors per sub-quantizer, and a few cells of IVF
MAX_TRAIN = 131_072  # k-means training vectors at most (40 per cell is enough; more costs minutes)
NPROBES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)
EF_SEARCHES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
BLOCK_BYTES = 64 << 20  # vectors read from the store per block (whole chunks)


# ---------------------------------------------------------------------------- type choice
@dataclass
class Plan:
    """Which index to build, and why."""

    kind: str  # flat | hnsw | ivf | ivfpq
    factory: str  # faiss.index_factory string
    memory: int  # estimated bytes of the index in memory
    reason: str
    nlist: int = 0  # IVF cells
    pq_bytes: int = 0  # PQ code bytes per vector


def nlist_for(n: int) -> int:
    """IVF cells: a power of two near 2 sqrt(N) (1M -> 2048, 100k -> 512), with >= 39 training vectors each."""
    target = 2 * math.sqrt(n)
    nlist = 2 ** round(math.log2(max(target, 1)))
    while nlist > 1 and nlist * 39 > n:
        nlist //= 2
    return int(min(max(nlist, 1), 65536))


def memory_estimate(kind: str, n: int, dim: int, nlist: int = 0, pq_bytes: int = 0) -> int:
    """Bytes the index takes in memory (faiss's layout; Python-side tables not counted)."""
    raw = n * dim * 4
    if kind == "flat":
        return raw
    if kind == "hnsw":
        # level 0 holds 2M neighbour ids of 4 B per vector; upper levels add ~1/M of that
        return raw + int(n * 2 * HNSW_M * 4 * (1 + 1 / HNSW_M)) + n * 8
    centroids = nlist * dim * 4
    if kind == "ivf":
        return raw + n * 8 + centroids  # + an int64 id per vector in its list
    if kind == "ivfpq":
        return n * (pq_bytes + 8) + centroids + 256 * dim * 4  # codes + ids + cells + codebooks
    raise ValueError(kind)


def choose_index(n: int, dim: int, budget: int, latency_ms: float = DEFAULT_LATENCY_MS,
                 flat_rate: float = FLAT_RATE, hnsw_max_n: int = HNSW_MAX_N) -> Plan:
    """The index type for N vectors of `dim` under a memory budget (bytes) and a p99 latency target."""
    if n < 1:
        raise UserError("nothing to index: no sample has a usable vector")
    flat_bytes = memory_estimate("flat", n, dim)
    flat_ms = 1000.0 * n * dim / flat_rate
    fits = f"{_size(flat_bytes)} of vectors"
    if flat_bytes <= budget and flat_ms <= latency_ms:
        return Plan("flat", "Flat", flat_bytes, f"{fits} fit {_size(budget)} and a full scan takes "
                    f"~{flat_ms:.1f} ms <= {latency_ms:g} ms: exact search")
    if flat_bytes <= budget and n < MIN_PQ_N:  # too few to train anything; exact search, a bit slower
        return Plan("flat", "Flat", flat_bytes, f"only {n} vectors: exact search (~{flat_ms:.1f} ms)")
    hnsw_bytes = memory_estimate("hnsw", n, dim)
    if hnsw_bytes <= budget and n <= hnsw_max_n:
        return Plan("hnsw", f"HNSW{HNSW_M},Flat", hnsw_bytes,
                    f"a full scan takes ~{flat_ms:.0f} ms > {latency_ms:g} ms; vectors + HNSW{HNSW_M} graph "
                    f"({_size(hnsw_bytes)}) fit {_size(budget)} and N <= {hnsw_max_n:,}")
    nlist = nlist_for(n)
    ivf_bytes = memory_estimate("ivf", n, dim, nlist)
    if ivf_bytes <= budget:
        why = f"N = {n:,} > {hnsw_max_n:,} (HNSW builds slowly)" if hnsw_bytes <= budget \
            else f"the HNSW graph would not fit ({_size(hnsw_bytes)})"
        return Plan("ivf", f"IVF{nlist},Flat", ivf_bytes,
                    f"a full scan takes ~{flat_ms:.0f} ms > {latency_ms:g} ms and {why}; {fits} fit "
                    f"{_size(budget)}: IVF-Flat with {nlist} cells", nlist=nlist)
    if n < MIN_PQ_N:
        raise UserError(f"memory budget {_size(budget)} is too small for {n} vectors of {dim} "
                        f"(exact search needs {_size(flat_bytes)}); raise --memory-budget")
    for pq_bytes in sorted((m for m in range(1, dim // 2 + 1) if dim % m == 0), reverse=True):
        need = memory_estimate("ivfpq", n, dim, nlist, pq_bytes)
        if need <= budget:
            return Plan("ivfpq", f"IVF{nlist},PQ{pq_bytes}", need,
                        f"{fits} do not fit {_size(budget)}: IVF-PQ, {pq_bytes} B per vector "
                        f"({dim * 4 // pq_bytes}x smaller), {nlist} cells", nlist=nlist, pq_bytes=pq_bytes)
    smallest = memory_estimate("ivfpq", n, dim, nlist, 1)
    raise UserError(f"memory budget {_size(budget)} is too small for {n:,} vectors of {dim}: even 1-byte PQ "
                    f"codes need {_size(smallest)}; raise --memory-budget")


KINDS = ("flat", "hnsw", "ivf", "ivfpq")


def plan_for(kind: str, n: int, dim: int, budget: int) -> Plan:
    """A plan of the given type (`--type`), sized as choose_index would size it; IVF-PQ codes fit the budget."""
    if kind not in KINDS:
        raise UserError(f"--type {kind!r}: choose from {', '.join(KINDS)}")
    nlist = nlist_for(n)
    if kind == "flat":
        return Plan("flat", "Flat", memory_estimate("flat", n, dim), "asked for (--type flat)")
    if kind == "hnsw":
        return Plan("hnsw", f"HNSW{HNSW_M},Flat", memory_estimate("hnsw", n, dim), "asked for (--type hnsw)")
    if kind == "ivf":
        return Plan("ivf", f"IVF{nlist},Flat", memory_estimate("ivf", n, dim, nlist), "asked for (--type ivf)",
                    nlist=nlist)
    if n < MIN_PQ_N:
        raise UserError(f"--type ivfpq needs at least {MIN_PQ_N} vectors to train its codebooks (have {n})")
    fitting = [m for m in range(1, dim // 2 + 1) if dim % m == 0
               and memory_estimate("ivfpq", n, dim, nlist, m) <= budget] or [1]
    m = max(fitting)
    return Plan("ivfpq", f"IVF{nlist},PQ{m}", memory_estimate("ivfpq", n, dim, nlist, m),
                f"asked for (--type ivfpq): {m} B per vector", nlist=nlist, pq_bytes=m)


def parse_size(text: str | int) -> int:
    """'4GB' -> 4e9, '512MB', '1.5GiB' -> 1.5 x 2^30, '1000000' -> bytes (as Dask's parse_bytes)."""
    if isinstance(text, (int, float)):
        return int(text)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)b?\s*", str(text), re.IGNORECASE)
    if not match:
        raise UserError(f"memory size {text!r} not understood; write e.g. 4GB, 512MB or 1.5GiB")
    number, unit, binary = match.groups()
    power = " kmgt".index(unit.lower() or " ")
    return int(float(number) * (1024 if binary else 1000) ** power)


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


# ---------------------------------------------------------------------------- the field
def embedding_fields(labels: LabelStore) -> list[str]:
    """TEACHER/FIELD of every field that can be indexed: a float vector per sample, or per frame of a clip."""
    found = []
    for teacher in labels.teachers():
        for name in labels.arrays(teacher):
            if name != "ok" and field_unit(labels, teacher, name):
                found.append(f"{teacher}/{name}")
    return found


def field_unit(labels: LabelStore, teacher: str, name: str) -> str | None:
    """What one vector of TEACHER/FIELD stands for: "sample" for a (N, D) float field (an image's or a
    clip's, e.g. clap/embedding), "frame" for a frame teacher's (N, T, D) float field of a clip store (e.g.
    dinov2/cls on frames), None for anything else."""
    shape, dtype = labels.array_info(f"{teacher}/{name}")
    if np.dtype(dtype).kind != "f" or shape[-1] < 2:
        return None
    if len(shape) == 2:
        return "sample"
    sees_frames = labels.provenance(teacher).get("sees", "frames") == "frames"
    if sees_frames and len(labels.kind.frame_axes) == 1 and len(shape) == 3 and shape[1] == labels.kind.frame_axes[0]:
        return "frame"
    return None


def resolve_field(labels: LabelStore, spec: str) -> tuple[str, str]:
    """'dinov2/cls' -> ("dinov2", "cls"), or a UserError that lists what can be indexed."""
    teacher, _, name = spec.partition("/")
    choices = ", ".join(embedding_fields(labels)) or "none (label it with an embedding teacher, e.g. dinov2)"
    if not name:
        raise UserError(f"--field {spec!r}: give TEACHER/FIELD; embedding fields in {labels.uri}: {choices}")
    if teacher not in labels.teachers():
        raise UserError(f"--field {spec}: {labels.uri} has no teacher {teacher!r}; embedding fields: {choices}")
    if name not in labels.arrays(teacher) or name == "ok":
        raise UserError(f"--field {spec}: teacher {teacher} has no field {name!r}; embedding fields: {choices}")
    if not field_unit(labels, teacher, name):
        shape, dtype = labels.array_info(f"{teacher}/{name}")
        shape = "×".join(map(str, shape[1:])) or "scalar"
        kind = "string" if np.dtype(dtype).kind in "OTUS" else str(dtype)
        if labels.kind.frames_per_sample != 1:
            raise UserError(f"--field {spec} is a {shape} {kind} field per clip, not an embedding: audit index of "
                            f"{labels.sample_kind} samples reads a float vector per clip (D) or per frame (T×D); "
                            f"embedding fields in {labels.uri}: {choices}")
        raise UserError(f"--field {spec} is a {shape} {kind} field per sample, not an embedding (a float "
                        f"vector); embedding fields in {labels.uri}: {choices}")
    return teacher, name


def fingerprint(labels: LabelStore, teacher: str) -> dict:
    """What must not change between building an index and using it: the store and the teacher's labels."""
    provenance = labels.provenance(teacher)
    return {"store_created": labels.created, "n": labels.n,
            "teacher_created": provenance.get("created"),
            "checkpoint_sha256": provenance.get("checkpoint_sha256")}


# ---------------------------------------------------------------------------- reading vectors
def normalise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 unit rows, and a mask of the rows that had a finite non-zero norm (the others are dropped)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    good = np.isfinite(norms) & (norms > 0)
    out = np.zeros_like(x)
    out[good] = x[good] / norms[good, None]
    return out[good], good


class FieldRows:
    """The rows an index holds of TEACHER/FIELD, read block by block: one per sample of a (N, D) field, or
    one per frame of a clip's (N, T, D) field, row = sample x T + t (a moment of a clip). `ok` and
    `unit_size` are in rows, so a block of whole units is still whole chunks of the store."""

    def __init__(self, labels: LabelStore, teacher: str, name: str):
        self.array = labels.reader(f"{teacher}/{name}")
        self.per_sample = self.array.shape[1] if len(self.array.shape) == 3 else 1  # T, or 1
        self.ok = np.repeat(labels.read(f"{teacher}/ok").astype(bool), self.per_sample)
        self.unit_size = labels.unit_size * self.per_sample
        self.shape = (len(self.ok), int(self.array.shape[-1]))

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop = rows.start or 0, len(self.ok) if rows.stop is None else rows.stop
        first, last = start // self.per_sample, -(-stop // self.per_sample)
        block = np.asarray(self.array[first:last]).reshape(-1, self.shape[1])
        return block[start - first * self.per_sample:stop - first * self.per_sample]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows at scattered positions (held-out queries)."""
        samples, frames = np.divmod(np.asarray(rows, np.int64), self.per_sample)
        if not len(samples):
            return np.zeros((0, self.shape[1]), np.float32)
        unique, where = np.unique(samples, return_inverse=True)
        read = np.asarray(self.array.oindex[unique]).reshape(len(unique), self.per_sample, self.shape[1])
        return read[where, frames]


def iter_vectors(array, ok: np.ndarray, unit_size: int):
    """(sample indices, unit vectors) per block of whole chunks, ok rows with usable vectors only."""
    dim = array.shape[1]
    rows = max(unit_size, BLOCK_BYTES // (dim * 4) // unit_size * unit_size)
    for start in range(0, len(ok), rows):
        stop = min(len(ok), start + rows)
        keep = np.flatnonzero(ok[start:stop])
        if not len(keep):
            continue
        x, good = normalise(array[start:stop][keep])
        yield start + keep[good], x


def _training_sample(array, ok: np.ndarray, unit_size: int, n: int, rng) -> np.ndarray:
    """About n unit vectors from whole chunks picked at random (reads ~n rows, not the whole field)."""
    units = rng.permutation(-(-len(ok) // unit_size))
    parts, have = [], 0
    for u in units:
        start, stop = u * unit_size, min(len(ok), (u + 1) * unit_size)
        keep = np.flatnonzero(ok[start:stop])
        if len(keep):
            x, _ = normalise(array[start:stop][keep])
            parts.append(x)
            have += len(x)
        if have >= n:
            break
    return np.concatenate(parts)[:n] if parts else np.zeros((0, array.shape[1]), np.float32)


class ExactTopK:
    """Exact top-k inner products of fixed queries, over database blocks fed one at a time."""

    def __init__(self, queries: np.ndarray, k: int):
        self.q, self.k = queries, k
        self.scores = np.full((len(queries), k), -np.inf, np.float32)
        self.ids = np.full((len(queries), k), -1, np.int64)
        self.seen = 0

    def add(self, block: np.ndarray) -> None:
        scores = self.q @ block.T  # (q, b)
        ids = np.broadcast_to(np.arange(self.seen, self.seen + len(block)), scores.shape)
        self.seen += len(block)
        scores, ids = np.hstack([self.scores, scores]), np.hstack([self.ids, ids])
        top = np.argpartition(-scores, self.k - 1, axis=1)[:, :self.k] if scores.shape[1] > self.k \
            else np.broadcast_to(np.arange(scores.shape[1]), (len(scores), scores.shape[1]))
        self.scores = np.take_along_axis(scores, top, 1)
        self.ids = np.take_along_axis(ids, top, 1)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(-self.scores, axis=1, kind="stable")
        return np.take_along_axis(self.scores, order, 1), np.take_along_axis(self.ids, order, 1)


# ---------------------------------------------------------------------------- build
def build_index(store: str, field: str, out: str | Path, memory_budget: str | int = DEFAULT_BUDGET,
                latency_ms: float = DEFAULT_LATENCY_MS, target_recall: float = TARGET_RECALL,
                queries: int = QUERIES, gpu: bool | None = None, kind: str | None = None, seed: int = 0,
                hnsw_max_n: int = HNSW_MAX_N, log: Callable[[str], None] = lambda line: None) -> dict:
    """Build, tune and write the index of `field` (TEACHER/FIELD) of `store` into `out`; returns info.json.

    `kind` forces the index type (flat, hnsw, ivf, ivfpq) instead of choose_index's choice.
    """
    import faiss

    started = time.perf_counter()
    budget = parse_size(memory_budget)
    labels = LabelStore.open(str(store))
    teacher, name = resolve_field(labels, field)
    array = FieldRows(labels, teacher, name)  # read block by block below; rows are samples or frames
    unit = "frame" if field_unit(labels, teacher, name) == "frame" else labels.sample_kind
    ok, unit_size = array.ok, array.unit_size
    n_ok, dim = int(ok.sum()), int(array.shape[1])
    if not n_ok:
        raise UserError(f"no sample of {labels.uri} has {teacher} labels yet (ok = false everywhere); "
                        f"run `omnimill label` with --teacher {teacher} first")
    plan = plan_for(kind, n_ok, dim, budget) if kind else choose_index(n_ok, dim, budget, latency_ms,
                                                                       hnsw_max_n=hnsw_max_n)
    log(f"{n_ok:,} vectors of {dim}: {plan.factory} ({plan.reason})")
    rng = np.random.default_rng(seed)
    use_gpu = _gpu_available() if gpu is None else gpu
    if use_gpu and not _gpu_available():
        raise UserError("--gpu: this faiss has no GPU support or no GPU is visible (pip install omnimill[gpu])")
    out = _prepare_out(Path(out))  # every check passed: from here on the old index (if any) is replaced

    # Held-out queries: random indexed samples, read before the add pass so exact search runs in the same pass.
    # Two disjoint sets: the search parameter is tuned on the first, the recall info.json records is measured
    # on the second (a setting tuned on the queries it is scored on would overstate its recall).
    query_rows = np.sort(rng.choice(np.flatnonzero(ok), min(2 * queries, n_ok), replace=False))
    xq, good = normalise(array.take(query_rows))
    query_rows = query_rows[good]
    exact = ExactTopK(xq, min(K + 1, n_ok))
    n_recall = min(queries, len(query_rows) - len(query_rows) // 2)
    recall_set = np.zeros(len(query_rows), bool)
    recall_set[rng.choice(len(query_rows), n_recall, replace=False)] = True

    index, resources = new_index(plan, dim, use_gpu)
    t0 = time.perf_counter()
    if plan.kind in ("ivf", "ivfpq"):
        sample = _training_sample(array, ok, unit_size, training_size(plan, n_ok), rng)
        log(f"training on {len(sample):,} vectors")
        index.train(sample)
        del sample
    train_s = time.perf_counter() - t0
    ids = []
    for rows, x in iter_vectors(array, ok, unit_size):
        index.add(x)
        exact.add(x)
        ids.append(rows)
    ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    add_s = time.perf_counter() - t0 - train_s
    log(f"added {len(ids):,} vectors in {add_s:.1f}s")
    if not len(ids):
        raise UserError(f"every {field} vector of {labels.uri} is zero or not finite: nothing to index")
    _, truth = exact.result()
    self_ids = np.searchsorted(ids, query_rows)
    tuning, scoring = ~recall_set, recall_set

    params, sweep = tune(index, plan.kind, xq[tuning], truth[tuning], self_ids[tuning], latency_ms, target_recall,
                         plan.nlist, resources is not None)
    recall, p50, p99 = measure(index, xq[scoring], truth[scoring], self_ids[scoring])
    log(f"{_describe(params)}: recall@{K} {recall:.3f}, p50 {p50:.2f} ms, p99 {p99:.2f} ms "
        f"on {int(scoring.sum())} held-out queries (tuned on {int(tuning.sum())} others)")

    cpu_index = faiss.index_gpu_to_cpu(index) if resources is not None else index
    faiss.write_index(cpu_index, str(out / "index.faiss"))
    samples, frames = np.divmod(ids, array.per_sample)  # FAISS id -> row -> (sample, frame)
    np.save(out / "ids.npy", samples.astype(np.int64))
    if unit == "frame":
        np.save(out / "frames.npy", frames.astype(np.int32))
    keys = labels.keys()[samples]
    np.save(out / "keys.npy", np.asarray([str(k) for k in keys], dtype=str))
    provenance = labels.provenance(teacher)
    info = {
        "format": FORMAT, "omnimill_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "store": _absolute(labels.uri), "corpus": labels.corpus, "field": f"{teacher}/{name}",
        "teacher": teacher, "dim": dim, "unit": unit, "frames_per_sample": array.per_sample,
        "n_store": labels.n, "n_ok": n_ok, "n": int(len(ids)),
        "n_dropped": n_ok - int(len(ids)),
        "fingerprint": fingerprint(labels, teacher),
        "teacher_provenance": {k: provenance.get(k) for k in ("teacher", "spec", "checkpoint", "checkpoint_path",
                                                              "checkpoint_sha256", "config", "created")},
        "metric": "inner product on L2-normalised vectors = cosine similarity; distance = 1 - cosine",
        "type": plan.kind, "factory": plan.factory, "reason": plan.reason, "nlist": plan.nlist,
        "pq_bytes": plan.pq_bytes, "params": params, "tuning": sweep,
        "memory_budget": budget, "memory_estimate": plan.memory, "index_bytes": (out / "index.faiss").stat().st_size,
        "latency_target_ms": latency_ms, "target_recall": target_recall,
        "measured": {"k": K, "queries": int(scoring.sum()), "tuning_queries": int(tuning.sum()),
                     "recall_queries": "disjoint from tuning",
                     f"recall@{K}": recall, "p50_ms": p50, "p99_ms": p99,
                     "how": "leave-one-out: held-out queries are indexed samples, each with itself removed "
                            "from its exact and its approximate neighbours; recall and latency on queries "
                            "disjoint from those the search parameter was tuned on; latency = one query "
                            "per search"},
        "query_samples": {"tuning": query_rows[tuning].tolist(), "recall": query_rows[scoring].tolist()},
        "build_seconds": round(time.perf_counter() - started, 2), "train_seconds": round(train_s, 2),
        "add_seconds": round(add_s, 2), "faiss_version": faiss.__version__, "gpu": resources is not None,
    }
    write_atomic(out / "info.json", json.dumps(info, indent=2, default=str) + "\n")  # last, whole: the index is complete
    return info


def new_index(plan: Plan, dim: int, gpu: bool = False):
    """(empty faiss index for `plan`, GPU resources or None). Inner product: vectors are L2-normalised first."""
    import faiss

    index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    if plan.kind == "hnsw":
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    if plan.kind == "ivfpq":  # index_factory turns on polysemous training (slow annealing) that we never use
        faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
    if gpu:
        resources, index = _to_gpu(index, plan.kind)
        return index, resources
    return index, None


def training_size(plan: Plan, n: int) -> int:
    """k-means wants ~40 vectors per cell (faiss warns below 39); PQ codebooks 256 centroids x 40."""
    return min(n, MAX_TRAIN, max(40 * plan.nlist, 256 * 40 if plan.kind == "ivfpq" else 0))


def _prepare_out(out: Path) -> Path:
    """An empty or missing directory, or an old index (rebuilt); anything else is refused."""
    ours = {"index.faiss", "ids.npy", "frames.npy", "keys.npy", "info.json"}
    if out.exists():
        if not out.is_dir():
            raise UserError(f"--out {out} is a file; give a directory for the index")
        others = {p.name for p in out.iterdir()} - ours
        if others:
            raise UserError(f"--out {out} holds other files ({', '.join(sorted(others)[:3])}); "
                            "give an empty or new directory")
        (out / "info.json").unlink(missing_ok=True)  # the old index is invalid from here on
        (out / "frames.npy").unlink(missing_ok=True)  # an old per-frame index's; a new one writes its own
    out.mkdir(parents=True, exist_ok=True)
    return out


def _absolute(uri: str) -> str:
    return uri if "://" in uri else str(Path(uri).resolve())


def _describe(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "exact"


# ---------------------------------------------------------------------------- tuning and measuring
def tune(index, kind: str, xq: np.ndarray, truth: np.ndarray, self_ids: np.ndarray, latency_ms: float,
         target_recall: float, nlist: int = 0, gpu: bool = False) -> tuple[dict, list[dict]]:
    """The smallest nprobe / efSearch reaching `target_recall` within `latency_ms` (p99).

    Settings are tried in increasing order (recall and latency both grow). The first that reaches the
    recall target within the latency target wins; if latency runs over first, the best setting that was
    within it wins; if none reaches the target, the one with the best recall within latency (the sweep
    stops early when three larger settings in a row gain less than 0.001 recall).
    """
    if kind == "flat" or not len(xq):
        return {}, []
    name, values = ("efSearch", EF_SEARCHES) if kind == "hnsw" else \
        ("nprobe", [v for v in NPROBES if v <= nlist] or [nlist])
    sweep, best, stalled = [], None, 0
    timed = xq[:SWEEP_LATENCY_QUERIES]
    for value in values:
        set_params(index, {name: value}, gpu)
        recall = recall_at_k(index, xq, truth, self_ids)
        _, p99 = latency(index, timed)
        sweep.append({name: value, f"recall@{K}": round(recall, 4), "p99_ms": round(p99, 3)})
        if p99 > latency_ms and best is not None:
            break  # over the target: keep the last setting that met it
        if best is None or recall > best[1] + 1e-3:
            best, stalled = (value, recall), 0
        else:
            stalled += 1
        if recall >= target_recall or stalled == 3:
            break  # reached; or a plateau (PQ codes cap recall): larger settings only cost time
    params = {name: best[0]}
    set_params(index, params, gpu)
    return params, sweep


def set_params(index, params: dict, gpu: bool = False) -> None:
    import faiss

    space = faiss.GpuParameterSpace() if gpu else faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, value)


def search_ids(index, xq: np.ndarray, k: int) -> np.ndarray:
    _, found = index.search(np.ascontiguousarray(xq, np.float32), k)
    return found


def recall_at_k(index, xq: np.ndarray, truth: np.ndarray, self_ids: np.ndarray, k: int = K) -> float:
    """Mean share of each query's exact top-k (itself excluded) that the index finds in its top-k."""
    found = search_ids(index, xq, truth.shape[1])
    hits, total = 0, 0
    for row, exact, me in zip(found, truth, self_ids):
        want = [j for j in exact if j != me and j >= 0][:k]
        got = [j for j in row if j != me and j >= 0][:k]
        hits += len(set(got).intersection(want))
        total += len(want)
    return hits / total if total else 1.0


def latency(index, xq: np.ndarray, k: int = K + 1) -> tuple[float, float]:
    """p50 and p99 milliseconds of one query per search call (how an auditor asks)."""
    times = []
    for row in range(len(xq)):
        t0 = time.perf_counter()
        index.search(xq[row:row + 1], k)
        times.append(time.perf_counter() - t0)
    if not times:
        return 0.0, 0.0
    ms = 1000.0 * np.asarray(times)
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def measure(index, xq: np.ndarray, truth: np.ndarray, self_ids: np.ndarray) -> tuple[float, float, float]:
    """recall@K on every held-out query, p50 / p99 latency (ms) over them, one query at a time."""
    recall = recall_at_k(index, xq, truth, self_ids)
    p50, p99 = latency(index, xq)
    return round(recall, 4), round(p50, 3), round(p99, 3)


# ---------------------------------------------------------------------------- GPU and loading
def _gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _to_gpu(index, kind: str):
    """(resources, GPU index) for flat and IVF types; HNSW has no GPU version and stays on the CPU."""
    import faiss

    if kind == "hnsw":
        return None, index
    resources = faiss.StandardGpuResources()
    options = faiss.GpuClonerOptions()
    options.useFloat16LookupTables = kind == "ivfpq"  # lets IVF-PQ with > 48 code bytes run on the GPU
    return resources, faiss.index_cpu_to_gpu(resources, 0, index, options)


@dataclass
class LoadedIndex:
    path: Path
    info: dict
    index: object  # faiss.Index, on the GPU when one is there
    ids: np.ndarray  # FAISS id -> sample index
    keys: np.ndarray  # FAISS id -> key
    frames: np.ndarray | None = None  # FAISS id -> frame t of its clip (a per-frame index), else None
    gpu: bool = False
    resources: object = field(default=None, repr=False)  # keeps GPU memory alive as long as the index

    @property
    def rows(self) -> np.ndarray:
        """FAISS id -> row of FieldRows (sample, or sample x T + frame): what a rebuilt FieldRows pass yields."""
        if self.frames is None:
            return self.ids
        return self.ids * int(self.info["frames_per_sample"]) + self.frames

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Unit (n, dim) vectors -> cosine scores and FAISS ids (n, k); -1 where fewer were found."""
        return self.index.search(np.ascontiguousarray(vectors, np.float32), k)


def load_index(path: str | Path, gpu: bool | None = None) -> LoadedIndex:
    """Read an index directory written by build_index; on a GPU when one is there (not HNSW)."""
    import faiss

    path = Path(path)
    info_path = path / "info.json"
    if not info_path.exists():
        what = "an interrupted build" if (path / "index.faiss").exists() else "not an index directory"
        raise UserError(f"{path} has no info.json ({what}); build one with "
                        "`omnimill audit index STORE --field TEACHER/FIELD --out DIR`")
    try:
        info = json.loads(info_path.read_text())
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise UserError(f"{path} is not an omnimill audit index (format "
                            f"{info.get('format') if isinstance(info, dict) else None!r})")
        index = faiss.read_index(str(path / "index.faiss"))
        ids = np.load(path / "ids.npy", allow_pickle=False)
        keys = np.load(path / "keys.npy", allow_pickle=False)
        frames = np.load(path / "frames.npy", allow_pickle=False) if info.get("unit") == "frame" else None
    except UserError:
        raise
    except Exception as e:  # a damaged file: json, faiss and numpy each raise their own kind
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"the index in {path} is damaged ({reason[:120]}); rebuild it with "
                        "`omnimill audit index`") from None
    if not (len(ids) == len(keys) == index.ntotal == info["n"] == (len(ids) if frames is None else len(frames))):
        raise UserError(f"{path} is inconsistent ({index.ntotal} vectors, {len(ids)} ids, {len(keys)} keys); "
                        "rebuild it with `omnimill audit index`")
    use_gpu = (_gpu_available() if gpu is None else gpu) and info["type"] != "hnsw"
    resources = None
    if use_gpu:
        resources, index = _to_gpu(index, info["type"])
    set_params(index, info.get("params", {}), resources is not None)
    return LoadedIndex(path, info, index, ids, keys, frames, resources is not None, resources)
