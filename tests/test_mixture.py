"""shards/mixture.py: interleaved documents (packed from a real token store's image tokens and a real sequence
tokenizer), caption pairs and text shards mixed by weight, one kind per batch, resumed exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from omnimill.engine.text import write_text_shards
from omnimill.errors import UserError
from omnimill.shards import interleave as il
from omnimill.shards.loader import TokenDataset
from omnimill.shards.mixture import MixtureLoader, PRESETS
from omnimill.shards.wds import export_wds
from omnimill.store.tokens import TokenStore
from omnimill.tokenize.base import load_tokenizer


@pytest.fixture(scope="module")
def sources(token_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture")
    pairs = root / "pairs"
    export_wds(token_data["tokens"], str(pairs), samples_per_shard=5, modalities=["rgb_image", "caption"])
    text = root / "text"
    write_text_shards([f"a note on boat {i}" for i in range(30)], [f"t{i}" for i in range(30)],
                      token_data["tokenizers"]["caption"], str(text), samples_per_shard=6)
    # documents: a caption, then two corpus images, then the next caption; images come from the token store
    tokenizer = load_tokenizer(token_data["tokenizers"]["caption"])
    images = il.StoreImageTokens(token_data["tokens"], "rgb_image")
    vocab = il.Vocab(tokenizer.vocab_size, images.v_image)
    keys, captions = sorted(token_data["captions"]), token_data["captions"]
    tally = __import__("collections").Counter()
    flat = []
    for d in range(12):
        pair = keys[2 * d:2 * d + 2]
        doc = [{"text": captions[pair[0]]}, *({"image": k, "alt": None, "meta": {}} for k in pair),
               {"text": captions[pair[1]]}, {"image": "not_in_the_store", "alt": None, "meta": {}}]
        ids, kept = il.interleave(doc, il.text_encoder(tokenizer), vocab, image_tokens=images, tally=tally)
        flat.append((f"doc{d:02d}", ids, kept))
    packed = il.pack(flat, vocab, seq_len=64, max_images=4)
    head = il.tokenizer_header(tokenizer, token_data["tokenizers"]["caption"], images, None, 64, 4)
    interleaved = root / "interleaved"
    il.write_interleaved(str(interleaved), packed.sequences, head, packed.padding_share, samples_per_shard=3)
    return {"pairs": str(pairs), "text": str(text), "interleaved": str(interleaved), "tally": tally,
            "packed": packed, "vocab": vocab}


def test_documents_take_image_tokens_from_the_token_store(token_data, sources):
    assert sources["tally"]["images_without_tokens"] == 12  # the key not in the store, once per document
    seq = sources["packed"].sequences[0]
    vocab, first = sources["vocab"], seq.images[0]
    start = int(np.flatnonzero(seq.tokens == vocab.BOI)[0])
    store = TokenStore.open(token_data["tokens"])
    row = store.index_of(first)
    assert (seq.tokens[start + 1:start + 17] - vocab.v_text == store.read("rgb_image/tokens", row)[0]).all()
    assert il.verify_interleaved(sources["interleaved"])["problems"] == []
    manifest = il.read_manifest(sources["interleaved"])  # the token store's 4x4 grid: 16 tokens per image
    assert manifest["image_tokens"] == 16 == store.tokenizer_info("rgb_image")["tokens_per_sample"]
    assert manifest["image_tokenizer"] == store.tokenizer_info("rgb_image")["path"]


def test_a_tokens_mode_pack_job_begun_before_image_tokens_reads_the_count_from_its_token_store(token_data, tmp_path):
    """pack.json written before the header held image_tokens: read_job adds the token store's count, which is
    what a rerun's tokenizer_header computes, so the rerun resumes instead of being refused."""
    tokenizer = load_tokenizer(token_data["tokenizers"]["caption"])
    images = il.StoreImageTokens(token_data["tokens"], "rgb_image")
    head = il.tokenizer_header(tokenizer, token_data["tokenizers"]["caption"], images, None, 64, 4)
    settings = {"head": {k: v for k, v in head.items() if k != "image_tokens"}, "tokens": token_data["tokens"],
                "image_modality": "rgb_image"}
    il.write_job(str(tmp_path), settings)
    assert il.read_job(str(tmp_path)) == {**settings, "head": json.loads(json.dumps(head))}


def mixture(sources, **kw):
    args = {"interleaved": il.InterleavedDataset(sources["interleaved"], seed=1),
            "pairs": TokenDataset(sources["pairs"]), "text": TokenDataset(sources["text"]),
            "batch_size": 4, "seed": 5, "shuffle_buffer": 8, "preset": "mm1", **kw}
    return MixtureLoader(**args)


def summary(batch) -> tuple:
    return batch["kind"], tuple(batch["keys"])


def test_mm1_mixture_kinds_and_shapes(sources):
    loader = mixture(sources)
    it = iter(loader)
    batches = [next(it) for _ in range(200)]
    counts = {k: sum(b["kind"] == k for b in batches) / 200 for k in PRESETS["mm1"]}
    for kind, share in PRESETS["mm1"].items():  # binomial sd at n=200: <= 0.035
        assert abs(counts[kind] - share) < 0.12, counts
    inter = next(b for b in batches if b["kind"] == "interleaved")
    assert inter["tokens"].shape == (4, 64) and len(inter["images"]) == len(inter["docs"]) == 4
    pair = next(b for b in batches if b["kind"] == "pairs")
    assert set(pair["tokens"]) == {"rgb_image", "caption"}
    text = next(b for b in batches if b["kind"] == "text")
    assert set(text["tokens"]) == {"caption"}


@pytest.mark.parametrize("workers", [0, 2])
def test_mixture_resumes_exactly(sources, workers):
    reference = [summary(b) for b, _ in zip(mixture(sources, num_workers=workers), range(40))]
    first = mixture(sources, num_workers=workers)
    it = iter(first)
    assert [summary(next(it)) for _ in range(17)] == reference[:17]
    state = json.loads(json.dumps(first.state_dict()))
    again = mixture(sources, num_workers=workers)
    again.load_state_dict(state)
    assert [summary(b) for b, _ in zip(again, range(23))] == reference[17:]


def test_mixture_refuses_wrong_setups(sources):
    with pytest.raises(UserError, match="no source was given for it"):
        MixtureLoader(batch_size=2, pairs=TokenDataset(sources["pairs"]), preset="mm1")
    with pytest.raises(UserError, match="unknown mixture preset"):
        mixture(sources, preset="mm2")
    state = mixture(sources).state_dict()
    other = mixture(sources, preset=None, weights={"interleaved": 1, "pairs": 1, "text": 1})
    with pytest.raises(UserError, match="another mixture"):
        other.load_state_dict(state)
    with pytest.raises(UserError, match="give both the same"):
        mixture(sources, interleaved=il.InterleavedDataset(sources["interleaved"], rank=1, world_size=2),
                rank=0, world_size=2)
    only_text = MixtureLoader(batch_size=3, text=TokenDataset(sources["text"]), weights={"text": 1})
    assert {b["kind"] for b, _ in zip(only_text, range(5))} == {"text"}


def test_pack_store_reads_image_tokens_from_a_token_store(token_data, tmp_path):
    """pack_store in tokens mode: v_image and the image tokenizer come from the token store; a document store's
    images that the token store does not hold (IMAGE_KEYs it never labelled) are dropped and counted."""
    from omnimill.engine.documents import ingest_documents

    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text_list": [f"boat {i}", "water"], "image_info": [
        {"raw_url": f"https://x.org/{i}.jpg", "matched_text_index": 1}]}) + "\n" for i in range(4)))
    store = str(tmp_path / "docs.zarr")
    ingest_documents(str(corpus), store, workers=1, progress=False, docs_per_unit=2)
    tokenizer = load_tokenizer(token_data["tokenizers"]["caption"])
    manifest = il.pack_store(store, str(tmp_path / "packed"), tokenizer, token_data["tokenizers"]["caption"],
                             tokens_uri=token_data["tokens"], seq_len=32)
    info = TokenStore.open(token_data["tokens"]).tokenizer_info("rgb_image")
    assert manifest["image_mode"] == "tokens" and manifest["v_text"] == tokenizer.vocab_size
    assert manifest["v_image"] == info["vocab_size"] and manifest["image_tokenizer"] == str(info["path"])
    assert manifest["stats"]["images_without_tokens"] == 4 and manifest["stats"]["documents"] == 4
    assert il.verify_interleaved(str(tmp_path / "packed"))["problems"] == []


def test_causal_rows_put_pairs_and_text_in_the_packed_sets_ids(token_data, sources):
    """Pairs exported from the real token store and text shards of the real caption tokenizer, as rows of the
    interleaved set's ids: BOI <the image's tokens + v_text> EOI <the caption's ids without <eos> and <pad>>
    EOD, text <ids> EOD, PAD after a row to the batch's longest. The packed set names the same tokenizers, so
    train/causal.py's check lets both sets in."""
    from omnimill.train.causal import open_packed, rows_of, mixture_sets
    from omnimill.train.config import TrainConfig

    tokenizer = load_tokenizer(token_data["tokenizers"]["caption"])
    config = TrainConfig()
    config.data.pairs, config.data.text = [sources["pairs"]], [sources["text"]]
    manifest = open_packed(sources["interleaved"])
    assert mixture_sets(manifest, config) == {"pairs": [(sources["pairs"], ["rgb_image", "caption"])],
                                              "text": [(sources["text"], ["caption"])]}
    rows, vocab = rows_of(manifest, config), sources["vocab"]
    loader = mixture(sources, preset=None, weights={"pairs": 1, "text": 1})
    seen = {}
    for batch, _ in zip(loader, range(20)):
        seen.setdefault(batch["kind"], (batch, rows(batch)))
    batch, row = seen["pairs"]
    for i in range(4):
        image, text = batch["tokens"]["rgb_image"][i].numpy(), batch["tokens"]["caption"][i].numpy()
        words = text[(text != tokenizer.pad_id) & (text != tokenizer.eos_id) & (text != tokenizer.cut_id)]
        want = [vocab.BOI, *(image + vocab.v_text), vocab.EOI, *words, vocab.EOD] if batch["present"]["rgb_image"][i] \
            else [*words, vocab.EOD]
        got = row["tokens"][i].numpy()
        assert got[:len(want)].tolist() == want and (got[len(want):] == vocab.PAD).all()
    assert row["tokens"].shape[1] < 64 and (row["tokens"][:, -1] != vocab.PAD).any()  # to the longest, not seq_len
    batch, row = seen["text"]
    decoded = [tokenizer.text.decode(r[r < vocab.EOD].tolist()) for r in row["tokens"].numpy()]
    assert decoded == [f"a note on boat {key[1:]}" for key in batch["keys"]]
    assert all(vocab.EOD in r for r in row["tokens"].tolist())
