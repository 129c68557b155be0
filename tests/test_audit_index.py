"""omnimill.audit.index: the type choice at any scale (plain arithmetic), and real FAISS indexes of every type
built from a real label store of clustered vectors, with their recall measured against exact search.

The stores here are written through LabelStore (prepare_teacher + write_unit), as the engine writes them,
with hand-made vectors: index building reads only the store, so no cluster is needed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from omnimill.audit import index as ix
from omnimill.audit.index import (ExactTopK, build_index, choose_index, load_index, memory_estimate, nlist_for,
                                  parse_size, recall_at_k)
from omnimill.cli import app
from omnimill.errors import UserError
from omnimill.labelers.base import Field
from omnimill.corpus.listing import CorpusIndex
from omnimill.store.labels import LabelStore

GB = 10**9


def clustered(n: int, dim: int, clusters: int = 40, spread: float = 0.35, seed: int = 0) -> np.ndarray:
    """Gaussian mixture: what real embeddings look like to an index (clumps, not a uniform sphere)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    return centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)


def vector_store(path, vectors: np.ndarray, ok: np.ndarray | None = None, unit_size: int = 256) -> str:
    """A label store whose teacher `emb` has `vec` (the vectors) and non-embedding fields beside it."""
    n, dim = vectors.shape
    corpus = CorpusIndex(str(path) + "-corpus", "folder")
    for i in range(n):
        corpus.add(f"s{i:05d}", f"/nowhere/s{i:05d}.jpg", caption=f"caption {i}")
    labels = LabelStore.create(str(path), corpus, view_size=16, unit_size=unit_size)
    fields = [Field("vec", (dim,), "float32"), Field("map", (4, 4), "float16", dense=True),
              Field("score", (), "float32"), Field("name", (), "str"), Field("ids", (3,), "int32")]
    labels.prepare_teacher("emb", fields, {"teacher": "emb", "config": {}, "checkpoint_sha256": "abc",
                                           "fields": {f.name: {"shape": list(f.shape)} for f in fields}})
    ok = np.ones(n, bool) if ok is None else ok
    for u in range(labels.n_units):
        unit = labels.unit(u)
        m = unit.stop - unit.start
        outputs = {"vec": vectors[unit.start:unit.stop], "map": np.zeros((m, 4, 4), np.float16),
                   "score": np.ones(m, np.float32), "name": np.array(["x"] * m, dtype=object),
                   "ids": np.zeros((m, 3), np.int32)}
        labels.write_unit("emb", unit, outputs, ok[unit.start:unit.stop], {"unit": u, "ok": m, "failed": 0})
    return str(path)


@pytest.fixture(scope="module")
def data():
    return clustered(3000, 32)


@pytest.fixture(scope="module")
def store(tmp_path_factory, data):
    ok = np.ones(len(data), bool)
    ok[[5, 77, 2999]] = False  # failed samples: never indexed
    vectors = data.copy()
    vectors[[10, 11]] = 0.0  # e.g. a text embedding of a sample without caption: dropped, counted
    return vector_store(tmp_path_factory.mktemp("ix") / "labels.zarr", vectors, ok)


# ---------------------------------------------------------------------------- type choice
def test_flat_when_small_and_fast():
    plan = choose_index(10_000, 768, 4 * GB)
    assert plan.kind == "flat" and plan.factory == "Flat" and plan.memory == 10_000 * 768 * 4


def test_hnsw_when_flat_is_too_slow_and_the_graph_fits():
    plan = choose_index(100_000, 768, 4 * GB)  # scan ~19 ms > 10 ms
    assert plan.kind == "hnsw" and plan.factory == "HNSW32,Flat"
    assert choose_index(100_000, 768, 4 * GB, latency_ms=100).kind == "flat"  # a looser target: exact is fine


def test_ivf_when_n_is_large_or_the_graph_does_not_fit():
    plan = choose_index(1_000_000, 768, 4 * GB)
    assert plan.kind == "ivf" and plan.factory == f"IVF{plan.nlist},Flat" and plan.nlist == 2048
    assert "HNSW builds slowly" in plan.reason
    flat = memory_estimate("flat", 200_000, 768)
    tight = choose_index(200_000, 768, flat + 10 * 10**6)  # vectors fit, their HNSW graph (51 MB) does not
    assert tight.kind == "ivf" and "would not fit" in tight.reason


def test_ivfpq_when_vectors_do_not_fit_uses_the_biggest_codes_that_do():
    budget = 300 * 10**6  # 1M x 768 floats are 3.07 GB
    plan = choose_index(1_000_000, 768, budget)
    assert plan.kind == "ivfpq" and plan.factory == f"IVF2048,PQ{plan.pq_bytes}"
    assert plan.memory <= budget and plan.pq_bytes == 256  # 12x smaller than float32
    bigger = min(m for m in range(plan.pq_bytes + 1, 385) if 768 % m == 0)
    assert memory_estimate("ivfpq", 1_000_000, 768, plan.nlist, bigger) > budget
    small = choose_index(1_000_000, 768, 100 * 10**6)
    assert small.kind == "ivfpq" and small.pq_bytes < plan.pq_bytes and small.memory <= 100 * 10**6


def test_budget_too_small_is_a_user_error():
    with pytest.raises(UserError, match="too small.*raise --memory-budget"):
        choose_index(1_000_000, 768, 5 * 10**6)
    with pytest.raises(UserError, match="too small"):
        choose_index(500, 768, 1000)


@pytest.mark.parametrize("n", [100, 5_000, 60_000, 400_000, 3_000_000, 50_000_000])
@pytest.mark.parametrize("budget", ["64MB", "1GB", "16GB"])
def test_every_choice_fits_its_budget(n, budget):
    try:
        plan = choose_index(n, 512, parse_size(budget))
    except UserError:
        return
    assert plan.memory <= parse_size(budget)
    if plan.kind in ("ivf", "ivfpq"):
        assert 1 <= plan.nlist and plan.nlist * 39 <= n


def test_nlist_and_sizes():
    assert nlist_for(1_000_000) == 2048 and nlist_for(100_000) == 512 and nlist_for(50) == 1
    assert parse_size("4GB") == 4 * GB and parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_size("512MB") == 512 * 10**6 and parse_size("1000") == 1000 and parse_size(77) == 77
    with pytest.raises(UserError, match="not understood"):
        parse_size("lots")


# ---------------------------------------------------------------------------- measuring
def test_exact_top_k_over_blocks_matches_brute_force(data):
    x = data[:500] / np.linalg.norm(data[:500], axis=1, keepdims=True)
    queries = x[:20]
    exact = ExactTopK(queries, 11)
    for start in range(0, 500, 64):  # uneven blocks, the last one short
        exact.add(x[start:start + 64])
    scores, ids = exact.result()
    brute = np.argsort(-(queries @ x.T), axis=1)[:, :11]
    assert (ids == brute).all() and (ids[:, 0] == np.arange(20)).all()  # each query finds itself first
    assert np.allclose(scores, np.take_along_axis(queries @ x.T, brute, 1), atol=1e-6)


class _FixedIndex:
    """Returns the same neighbour ids for every query: lets recall be computed by hand."""

    def __init__(self, found):
        self.found = np.asarray(found)

    def search(self, xq, k):
        return np.zeros_like(self.found, np.float32), self.found


def test_recall_drops_the_query_itself():
    truth = np.array([[0, 1, 2, 3]])  # query 0: itself, then 1, 2, 3
    assert recall_at_k(_FixedIndex([[0, 1, 2, 3]]), np.zeros((1, 4)), truth, np.array([0]), k=3) == 1.0
    assert recall_at_k(_FixedIndex([[1, 2, 9, 8]]), np.zeros((1, 4)), truth, np.array([0]), k=3) == 2 / 3
    assert recall_at_k(_FixedIndex([[0, 7, 8, 9]]), np.zeros((1, 4)), truth, np.array([0]), k=3) == 0.0


# ---------------------------------------------------------------------------- real indexes
def _info_on_disk(out) -> dict:
    return json.loads((out / "info.json").read_text())


def test_flat_index_is_exact_and_maps_ids_to_keys(store, data, tmp_path):
    info = build_index(store, "emb/vec", tmp_path / "flat")
    assert info["type"] == "flat" and info["params"] == {} and info["measured"]["recall@10"] == 1.0
    assert info == _info_on_disk(tmp_path / "flat")
    assert info["n_ok"] == 2997 and info["n"] == 2995 and info["n_dropped"] == 2  # 3 failed, 2 zero vectors
    loaded = load_index(tmp_path / "flat")
    expected = np.setdiff1d(np.arange(3000), [5, 77, 2999, 10, 11])
    assert (loaded.ids == expected).all()
    assert list(loaded.keys[:3]) == ["s00000", "s00001", "s00002"]
    assert loaded.keys[9] == "s00012"  # 5, 10 and 11 are not indexed
    unit = data[12] / np.linalg.norm(data[12])
    scores, found = loaded.search(unit[None], 3)
    assert loaded.keys[found[0, 0]] == "s00012" and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert info["metric"].startswith("inner product on L2-normalised") and "cosine" in info["metric"]
    assert info["fingerprint"]["store_created"] and info["teacher_provenance"]["checkpoint_sha256"] == "abc"
    for key in ("faiss_version", "build_seconds", "memory_estimate", "index_bytes", "gpu", "factory", "corpus"):
        assert key in info


@pytest.mark.parametrize("kind, name", [("hnsw", "efSearch"), ("ivf", "nprobe")])
def test_approximate_index_is_tuned_to_the_recall_target(store, tmp_path, kind, name):
    info = build_index(store, "emb/vec", tmp_path / kind, kind=kind, queries=500)
    assert info["type"] == kind and info == _info_on_disk(tmp_path / kind)
    if kind == "ivf":
        assert info["factory"] == f"IVF{info['nlist']},Flat" and info["nlist"] == nlist_for(2997)
    _check_tuning(info, name, target=ix.TARGET_RECALL)
    assert info["measured"]["recall@10"] >= 0.9  # on 2,995 clustered vectors both reach the target
    loaded = load_index(tmp_path / kind)
    assert loaded.info["params"] == info["params"]


def test_recall_is_measured_on_queries_disjoint_from_tuning(store, data, tmp_path):
    info = build_index(store, "emb/vec", tmp_path / "split", kind="hnsw", queries=300)
    measured, rows = info["measured"], info["query_samples"]
    assert measured["recall_queries"] == "disjoint from tuning"
    assert len(rows["recall"]) == measured["queries"] == 300
    assert len(rows["tuning"]) == measured["tuning_queries"] >= 298  # 600 drawn, less any zero vector drawn
    assert not set(rows["recall"]) & set(rows["tuning"])
    # the recorded recall is that of the recall set (recomputed here by brute force), not of the tuning set
    loaded = load_index(tmp_path / "split")
    x, _ = ix.normalise(data[loaded.ids])
    me = np.searchsorted(loaded.ids, rows["recall"])
    truth = np.argsort(-(x[me] @ x.T), axis=1)[:, :11]
    assert recall_at_k(loaded.index, x[me], truth, me) == pytest.approx(measured["recall@10"], abs=1e-4)
    # fewer samples than 2 x queries: split between the two sets, still disjoint
    small = build_index(store, "emb/vec", tmp_path / "small", kind="ivf", queries=2000)
    assert small["measured"]["queries"] + small["measured"]["tuning_queries"] == small["n"]
    assert not set(small["query_samples"]["recall"]) & set(small["query_samples"]["tuning"])


def test_ivfpq_index_fits_a_small_budget(store, tmp_path):
    budget = memory_estimate("ivfpq", 2997, 32, nlist_for(2997), 8)  # raw vectors take 4x more: do not fit
    info = build_index(store, "emb/vec", tmp_path / "pq", memory_budget=budget, latency_ms=1e-6, queries=300)
    assert info["type"] == "ivfpq" and info["memory_estimate"] <= budget  # chosen, not asked for
    assert info["factory"] == f"IVF{info['nlist']},PQ8" and info["pq_bytes"] == 8
    assert info["measured"]["recall@10"] > 0.3  # compressed codes: approximate, but far above chance (10/2995)
    _check_tuning(info, "nprobe", target=ix.TARGET_RECALL)


def test_unreachable_recall_target_keeps_the_best_setting(store, tmp_path):
    info = build_index(store, "emb/vec", tmp_path / "best", kind="ivf", target_recall=1.01, queries=200)
    best = max(s["recall@10"] for s in info["tuning"])
    chosen = [s["recall@10"] for s in info["tuning"] if s["nprobe"] == info["params"]["nprobe"]]
    assert len(chosen) == 1 and chosen[0] >= best - 3e-3  # larger settings gaining < 0.001 each are not taken


def _check_tuning(info: dict, name: str, target: float):
    """The chosen setting is the first that reached the target within latency, else the best one within it."""
    sweep, chosen = info["tuning"], info["params"][name]
    assert sweep and all(name in s for s in sweep) and chosen in [s[name] for s in sweep]
    values = [s[name] for s in sweep]
    assert values == sorted(values)
    within = [s for s in sweep if s["p99_ms"] <= info["latency_target_ms"]] or sweep[:1]
    reached = [s for s in within if s["recall@10"] >= target]
    if reached:
        assert chosen == reached[0][name]
        assert all(s["recall@10"] < target for s in sweep if s[name] < chosen)
    else:
        assert chosen == max(within, key=lambda s: s["recall@10"])[name]
    assert 0 < info["measured"]["p50_ms"] <= info["measured"]["p99_ms"]


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("field, message", [
    ("emb/map", r"emb/map is a 4×4 float16 field per sample, not an embedding"),
    ("emb/score", r"scalar float32 field"),
    ("emb/name", r"scalar string field"),
    ("emb/ids", r"3 int32 field"),
    ("emb/nope", r"teacher emb has no field 'nope'"),
    ("clip/embedding", r"has no teacher 'clip'"),
    ("vec", r"give TEACHER/FIELD"),
])
def test_fields_that_are_not_embeddings_are_refused(store, tmp_path, field, message):
    with pytest.raises(UserError, match=message) as error:
        build_index(store, field, tmp_path / "x")
    assert "emb/vec" in str(error.value)  # says what could be indexed
    assert not (tmp_path / "x" / "info.json").exists()


def test_unlabelled_store_and_foreign_out_dir(store, tmp_path, data):
    empty = vector_store(tmp_path / "none.zarr", data[:50], ok=np.zeros(50, bool))
    with pytest.raises(UserError, match="no sample .* has emb labels"):
        build_index(empty, "emb/vec", tmp_path / "a")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds other files"):
        build_index(store, "emb/vec", busy)
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    with pytest.raises(UserError, match="no info.json"):
        load_index(busy)


def test_cli_index(store, tmp_path):
    out = tmp_path / "cli-index"
    result = CliRunner().invoke(app, ["audit", "index", store, "--field", "emb/vec", "--out", str(out),
                                      "--memory-budget", "1GB", "--queries", "200"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "recall@10 1.000" in result.output
    assert _info_on_disk(out)["memory_budget"] == 10**9 and _info_on_disk(out)["measured"]["queries"] == 200
    # rebuilding into the same directory is allowed (an old index is replaced)
    again = CliRunner().invoke(app, ["audit", "index", store, "--field", "emb/vec", "--out", str(out)])
    assert again.exit_code == 0, again.output


def test_cli_index_bad_field_exits_2_with_one_line(store, tmp_path):
    result = CliRunner().invoke(app, ["audit", "index", store, "--field", "emb/map", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not an embedding" in lines[0] and "Traceback" not in result.output


def test_gpu_flag_without_a_gpu_is_a_user_error(store, tmp_path):
    if ix._gpu_available():
        pytest.skip("a GPU is visible to faiss here")
    with pytest.raises(UserError, match="no GPU support or no GPU"):
        build_index(store, "emb/vec", tmp_path / "g", gpu=True)
