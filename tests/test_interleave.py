"""shards/interleave.py: documents -> ids, packing rules and their edge cases, the shard set written, read,
verified and streamed with exact resume."""

from __future__ import annotations

import json
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from test_caption import tiny_blip  # noqa: F401  (a fixture: a tiny real BLIP checkpoint, random weights)
from test_engine_pack import inputs  # noqa: F401  (a fixture: a document store and a sequence tokenizer)

from omnimill.corpus.documents import image_key
from omnimill.errors import UserError
from omnimill.shards import interleave as il

G = 4  # image tokens per side: 16 per image, 18 with BOI/EOI
V_IMAGE = 64


@pytest.fixture(scope="module")
def text_tok():
    """A real byte-level BPE tokenizer, trained on a few sentences (what the sequence tokenizer wraps)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(["a cat sits on the mat", "the dog runs in the park"] * 10, trainer)
    return tok


def words(n: int) -> str:
    return " ".join(["the cat sits"] * (n // 3 + 1))


def document(doc_key: str, texts: list[str], images_after: list[int]) -> list[dict]:
    """Segments: texts in order, an image after text i for each i in images_after (repeats allowed)."""
    segments, k = [], 0
    for i, text in enumerate(texts):
        segments.append({"text": text})
        for _ in range(images_after.count(i)):
            segments.append({"image": image_key(doc_key, k), "alt": None, "meta": {}})
            k += 1
    return segments


def tokens_for(doc: list[dict], rng) -> dict:
    return {s["image"]: rng.integers(0, V_IMAGE, (G, G)) for s in doc if "image" in s}


def test_vocab_layout():
    v = il.Vocab(100, 64)
    assert (v.BOI, v.EOI, v.PAD, v.IMG_SLOT, v.EOD, v.size) == (164, 165, 166, 167, 168, 169)
    assert il.Vocab(100).specials == {"BOI": 100, "EOI": 101, "PAD": 102, "IMG_SLOT": 103, "EOD": 104}


def test_interleave_tokens_and_placeholders(text_tok):
    rng = np.random.default_rng(0)
    vocab = il.Vocab(text_tok.get_vocab_size(), V_IMAGE)
    enc = il.text_encoder(text_tok)
    doc = document("d0", ["a cat", "", "the park"], [0, 1])
    image_tokens = tokens_for(doc, rng)
    del image_tokens["d0/img_01"]  # not labelled: dropped, counted
    tally = Counter()
    ids, images = il.interleave(doc, enc, vocab, image_tokens=image_tokens, tally=tally)
    assert images == ["d0/img_00"] and tally["images_without_tokens"] == 1
    cat, park = enc("a cat"), enc("the park")
    expected = [*cat, vocab.BOI, *(image_tokens["d0/img_00"].reshape(-1) + vocab.v_text), vocab.EOI, *park, vocab.EOD]
    assert ids.dtype == np.int32 and ids.tolist() == expected
    placeholder = il.Vocab(vocab.v_text)
    ids, images = il.interleave(doc, enc, placeholder, slots=il.MM1_SLOTS)
    assert images == ["d0/img_00", "d0/img_01"]
    assert (ids == placeholder.IMG_SLOT).sum() == 2 * 144 and (ids == placeholder.BOI).sum() == 2
    with pytest.raises(UserError):
        il.interleave(doc, enc, vocab, image_tokens=image_tokens, slots=4)


def check(packed: il.Packed, vocab: il.Vocab, seq_len: int, max_images: int):
    """Invariants of every packing: full length, PAD only after content, whole image blocks, image count."""
    for seq in packed.sequences:
        assert seq.tokens.shape == (seq_len,) and seq.n_content > 0
        assert (seq.tokens[seq.n_content:] == vocab.PAD).all() and not (seq.tokens[:seq.n_content] == vocab.PAD).any()
        assert (seq.tokens == vocab.BOI).sum() == (seq.tokens == vocab.EOI).sum() == len(seq.images) <= max_images
        assert il._sequence_problem(seq.tokens, {"n_content": seq.n_content, "images": seq.images}, vocab,
                                    max_images) is None


def flat_docs(text_tok, docs, vocab, slots=None, rng=None):
    enc = il.text_encoder(text_tok)
    out = []
    for key, doc in docs:
        if slots:
            ids, images = il.interleave(doc, enc, vocab, slots=slots)
        else:
            ids, images = il.interleave(doc, enc, vocab, image_tokens=tokens_for(doc, rng))
        out.append((key, ids, images))
    return out


def test_pack_keeps_every_token_in_order(text_tok):
    """Concatenating the sequences' content gives back the documents' ids exactly (nothing lost or moved)."""
    rng = np.random.default_rng(1)
    vocab = il.Vocab(text_tok.get_vocab_size(), V_IMAGE)
    docs = [(f"d{i}", document(f"d{i}", [words(int(n)) for n in rng.integers(0, 60, 4)],
                               rng.integers(0, 4, rng.integers(0, 6)).tolist())) for i in range(30)]
    flat = flat_docs(text_tok, docs, vocab, rng=rng)
    packed = il.pack(flat, vocab, seq_len=64, max_images=2)
    check(packed, vocab, 64, 2)
    content = np.concatenate([s.tokens[:s.n_content] for s in packed.sequences])
    assert content.tolist() == np.concatenate([ids for _, ids, _ in flat]).tolist()
    assert [k for s in packed.sequences for k in s.images] == [k for _, _, ims in flat for k in ims]
    assert [k for s in packed.sequences for k in s.docs if k] == [k for s in packed.sequences for k in s.docs]
    assert sorted({k for s in packed.sequences for k in s.docs}) == sorted(k for k, _ in docs)
    pads = sum(64 - s.n_content for s in packed.sequences)
    assert packed.padding_share == pytest.approx(pads / (64 * len(packed.sequences)))
    assert 0 < packed.padding_share < 0.5


def test_document_with_40_images(text_tok):
    """40 images, 16 per sequence at most: 16 + 16 + 8, each image block whole."""
    vocab = il.Vocab(text_tok.get_vocab_size())
    doc = document("big", ["a cat"] * 40, list(range(40)))
    flat = flat_docs(text_tok, [("big", doc)], vocab, slots=8)
    packed = il.pack(flat, vocab, seq_len=4096, max_images=16)
    check(packed, vocab, 4096, 16)
    assert [len(s.images) for s in packed.sequences] == [16, 16, 8]
    assert all(s.docs == ["big"] for s in packed.sequences)
    assert packed.sequences[0].images[0] == "big/img_00" and packed.sequences[2].images[-1] == "big/img_39"


def test_image_larger_than_the_budget_is_dropped_and_recorded(text_tok):
    vocab = il.Vocab(text_tok.get_vocab_size())
    doc = document("d", ["a cat", "the park"], [0])
    flat = flat_docs(text_tok, [("d", doc)], vocab, slots=40)  # 42-token block, seq_len 32
    packed = il.pack(flat, vocab, seq_len=32)
    assert packed.dropped == [("d", "d/img_00")]
    assert [s.images for s in packed.sequences] == [[]]
    enc = il.text_encoder(text_tok)
    assert packed.sequences[0].tokens[:packed.sequences[0].n_content].tolist() == [
        *enc("a cat"), *enc("the park"), vocab.EOD]


def test_image_that_does_not_fit_moves_to_the_next_sequence(text_tok):
    vocab = il.Vocab(text_tok.get_vocab_size())
    enc = il.text_encoder(text_tok)
    text = words(20)
    n = len(enc(text))
    doc = document("d", [text, ""], [0])
    packed = il.pack(flat_docs(text_tok, [("d", doc)], vocab, slots=10), vocab, seq_len=n + 5)
    first, second = packed.sequences
    assert first.n_content == n and first.images == []  # 5 left < 12: the image opens the next one
    assert second.images == ["d/img_00"] and second.n_content == 13  # BOI + 10 + EOI + EOD


def test_empty_text_and_zero_documents(text_tok, tmp_path):
    vocab = il.Vocab(text_tok.get_vocab_size())
    assert il.pack([], vocab).sequences == [] and il.pack([], vocab).padding_share == 0.0
    flat = flat_docs(text_tok, [("e", [{"text": ""}]), ("f", [])], vocab, slots=4)
    packed = il.pack(flat, vocab, seq_len=8)
    assert [s.tokens[:s.n_content].tolist() for s in packed.sequences] == [[vocab.EOD, vocab.EOD]]
    assert packed.sequences[0].docs == ["e", "f"]
    head = il.header(vocab, 8, 16, "placeholders", 4, "tok", None)
    empty = il.write_interleaved(str(tmp_path / "empty"), [], head, 0.0)
    assert empty["n"] == 0 and empty["shards"] == []
    assert il.verify_interleaved(str(tmp_path / "empty"))["problems"] == []
    with pytest.raises(UserError, match="holds no sequences"):
        il.InterleavedDataset(str(tmp_path / "empty"))


def test_document_longer_than_several_sequences(text_tok):
    vocab = il.Vocab(text_tok.get_vocab_size())
    enc = il.text_encoder(text_tok)
    doc = document("long", [words(300), words(300)], [0])
    flat = flat_docs(text_tok, [("long", doc), ("next", [{"text": "a cat"}])], vocab, slots=6)
    total = len(flat[0][1]) + len(flat[1][1])
    packed = il.pack(flat, vocab, seq_len=50)
    check(packed, vocab, 50, 16)
    assert all(s.n_content == 50 for s in packed.sequences[:-1] if len(s.images) == 0)  # text fills sequences
    assert len(packed.sequences) >= 5
    assert packed.sequences[-1].docs[-1] == "next"
    assert sum(s.n_content for s in packed.sequences) == total
    assert len(enc(words(300))) > 50


# ---------------------------------------------------------------------------------------------- shard set
def packed_set(text_tok, tmp_path, n_docs=40, per_shard=7, seed=0):
    rng = np.random.default_rng(seed)
    vocab = il.Vocab(text_tok.get_vocab_size(), V_IMAGE)
    docs = [(f"doc{i:03d}", document(f"doc{i:03d}", [words(int(n)) for n in rng.integers(0, 40, 3)],
                                     rng.integers(0, 3, rng.integers(0, 4)).tolist())) for i in range(n_docs)]
    packed = il.pack(flat_docs(text_tok, docs, vocab, rng=rng), vocab, seq_len=48, max_images=3)
    head = il.header(vocab, 48, 3, "tokens", None, "tok/", "img/", G * G)
    out = str(tmp_path / "interleaved")
    manifest = il.write_interleaved(out, packed.sequences, head, packed.padding_share, samples_per_shard=per_shard)
    return out, manifest, packed


def test_write_read_verify_roundtrip(text_tok, tmp_path):
    out, manifest, packed = packed_set(text_tok, tmp_path)
    on_disk = json.loads((tmp_path / "interleaved" / "manifest.json").read_text())
    assert on_disk == manifest and manifest["format"] == il.FORMAT and manifest["n"] == len(packed.sequences)
    assert set(manifest) == {"format", "seq_len", "max_images", "image_mode", "slots", "image_tokens", "v_text",
                             "v_image", "specials", "vocab", "text_tokenizer", "image_tokenizer", "shards", "n",
                             "padding_share"}
    assert [r["n"] for r in manifest["shards"]][:-1] == [7] * (len(manifest["shards"]) - 1)
    got = [s for i in range(len(manifest["shards"])) for s in il.read_shard(out, manifest, i)]
    assert [k for k, _, _ in got] == [il.sequence_key(i) for i in range(len(packed.sequences))]
    for (key, tokens, meta), seq in zip(got, packed.sequences):
        assert (tokens == seq.tokens).all()
        assert meta == {"images": seq.images, "docs": seq.docs, "n_content": seq.n_content}
    assert il.verify_interleaved(out) == {"n": len(packed.sequences), "shards": len(manifest["shards"]), "problems": []}
    # plain tar readers (what webdataset does) see <key>.tokens and <key>.json, no PAX headers
    with tarfile.open(tmp_path / "interleaved" / "shard-000000.tar") as tar:
        names = tar.getnames()
        assert names[:2] == ["s000000000.tokens", "s000000000.json"]
        assert all(m.mtime == 0 and not m.pax_headers for m in tar.getmembers())


def test_same_documents_give_identical_shards(text_tok, tmp_path):
    _, a, _ = packed_set(text_tok, tmp_path / "a")
    _, b, _ = packed_set(text_tok, tmp_path / "b")
    assert [r["sha256"] for r in a["shards"]] == [r["sha256"] for r in b["shards"]]


def test_verify_finds_damage_and_refuses_other_folders(text_tok, tmp_path):
    out, manifest, _ = packed_set(text_tok, tmp_path)
    shard = tmp_path / "interleaved" / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    report = il.verify_interleaved(out)
    assert len(report["problems"]) == 1 and "shard-000001.tar: sha256" in report["problems"][0]
    with pytest.raises(UserError, match="not empty"):
        packed_set(text_tok, tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="no interleaved set"):
        il.InterleavedWriter(str(tmp_path / "other"), manifest, force=True)
    with pytest.raises(UserError, match="not an interleaved"):
        (tmp_path / "wds").mkdir()
        (tmp_path / "wds" / "manifest.json").write_text(json.dumps({"format": "omnimill.wds/1"}))
        il.read_manifest(str(tmp_path / "wds"))


def test_verify_finds_a_bad_sequence(text_tok, tmp_path):
    """A shard rewritten with a consistent sha256 but PAD inside the content is still caught."""
    out, manifest, packed = packed_set(text_tok, tmp_path)
    vocab = il.vocab_of(manifest)
    bad = packed.sequences[:manifest["shards"][0]["n"]]
    bad[0].tokens[0] = vocab.PAD
    data = il.shard_bytes(0, bad)
    (tmp_path / "interleaved" / "shard-000000.tar").write_bytes(data)
    import hashlib
    manifest["shards"][0]["sha256"] = hashlib.sha256(data).hexdigest()
    (tmp_path / "interleaved" / "manifest.json").write_text(json.dumps(manifest))
    problems = il.verify_interleaved(out)["problems"]
    assert problems == ["shard-000000.tar:s000000000: PAD is not exactly the tokens after n_content"]


def test_image_tokens_are_recorded_held_to_and_verified(text_tok, tmp_path):
    """The manifest's image_tokens: slots in placeholder mode, the count given in tokens mode (None when not
    told); packing refuses an image of another count; verify finds a block of another size; a set without
    the field (packed before it) verifies as before."""
    vocab, images = il.Vocab(text_tok.get_vocab_size(), V_IMAGE), il.Vocab(text_tok.get_vocab_size())
    assert il.header(images, 48, 3, "placeholders", 6, "tok", None)["image_tokens"] == 6
    assert il.header(vocab, 48, 3, "tokens", None, "tok", "img", 16)["image_tokens"] == 16
    assert il.header(vocab, 48, 3, "tokens", None, "tok", "img")["image_tokens"] is None
    with pytest.raises(UserError, match=r"placeholder mode has slots \(6\) tokens per image, not 5"):
        il.header(images, 48, 3, "placeholders", 6, "tok", None, 5)
    with pytest.raises(UserError, match="image_tokens must be >= 1, not 0"):
        il.header(vocab, 48, 3, "tokens", None, "tok", "img", 0)
    doc = document("d", [words(6), words(6)], [0, 1])
    tokens = {"d/img_00": np.ones((G, G), int), "d/img_01": np.ones((3, 3), int)}
    with pytest.raises(UserError, match="d/img_01: 9 image tokens, not the set's 16 per image"):
        il.pack_documents([("d", doc)], str(tmp_path / "nine"), il.text_encoder(text_tok),
                          il.header(vocab, 48, 3, "tokens", None, "tok", "img", G * G), tokens)

    out, manifest, _ = packed_set(text_tok, tmp_path)
    assert manifest["image_tokens"] == G * G and il.verify_interleaved(out)["problems"] == []
    path = tmp_path / "interleaved" / "manifest.json"
    path.write_text(json.dumps({**manifest, "image_tokens": G * G - 1}))
    problems = il.verify_interleaved(out)["problems"]
    with_images = [s for r in range(len(manifest["shards"])) for s in il.read_shard(out, manifest, r) if s[2]["images"]]
    assert len(problems) == len(with_images) > 0
    assert problems[0].endswith(f": an image block of {G * G} tokens, image_tokens {G * G - 1}")
    path.write_text(json.dumps({k: v for k, v in manifest.items() if k != "image_tokens"}))
    assert il.verify_interleaved(out)["problems"] == []


def test_a_pack_job_begun_before_image_tokens_resumes(inputs, tmp_path):
    """A pack.json whose head has no image_tokens (a job begun by the omnimill before it) is read with the
    count its rerun computes, so the rerun resumes: no part packed again, the manifest records image_tokens."""
    from omnimill.engine.pack import pack_job

    store, tokenizer = inputs
    out = tmp_path / "packed"
    args = dict(slots=4, seq_len=32, samples_per_shard=2, workers=1, progress=False, retries=0)
    first = pack_job(store, str(out), tokenizer, **args)
    assert first.parts_packed == first.parts and first.manifest["image_tokens"] == 4
    (out / "manifest.json").unlink()  # as if killed before finishing
    job = json.loads((out / "pack.json").read_text())
    del job["job"]["head"]["image_tokens"]
    (out / "pack.json").write_text(json.dumps(job))
    assert il.read_job(str(out))["head"]["image_tokens"] == 4
    again = pack_job(store, str(out), tokenizer, **args)
    assert again.parts_packed == 0 and again.manifest == first.manifest
    assert il.verify_interleaved(str(out))["problems"] == []


# ---------------------------------------------------------------------------------------------- streaming
def take(iterator, n):
    return [next(iterator)["key"] for _ in range(n)]


def test_dataset_covers_each_epoch_and_resumes_exactly(text_tok, tmp_path):
    out, manifest, packed = packed_set(text_tok, tmp_path)
    n = manifest["n"]
    ds = il.InterleavedDataset(out, seed=3)
    reference = take(iter(ds), 2 * n + 5)
    assert sorted(reference[:n]) == sorted(il.sequence_key(i) for i in range(n))  # an epoch: every one once
    assert reference[:n] != reference[n:2 * n]  # reshuffled per epoch
    for stop in (0, 5, n, n + 3):  # mid-shard, a shard boundary across epochs
        first = il.InterleavedDataset(out, seed=3)
        it = iter(first)
        assert take(it, stop) == reference[:stop]
        state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint
        again = il.InterleavedDataset(out, seed=3)
        again.load_state_dict(state)
        assert take(iter(again), 2 * n + 5 - stop) == reference[stop:]
    with pytest.raises(UserError, match="another interleaved set"):
        il.InterleavedDataset(out, seed=4).load_state_dict(state)


def test_dataset_ranks_split_the_shards_and_epochs_end(text_tok, tmp_path):
    out, manifest, _ = packed_set(text_tok, tmp_path)
    seen = [[s["key"] for s in il.InterleavedDataset(out, rank=r, world_size=2, epochs=1)] for r in (0, 1)]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == [il.sequence_key(i) for i in range(manifest["n"])]
    sample = next(iter(il.InterleavedDataset(out, shuffle=False)))
    assert sample["key"] == "s000000000" and sample["tokens"].dtype == torch.int64
    assert set(sample) == {"key", "tokens", "images", "docs", "n_content"}


def test_pack_documents_streams_to_the_same_set_as_pack(text_tok, tmp_path):
    """pack_documents (streaming, nothing held out) writes the sequences pack + write_interleaved write, each
    marked "train", and records what it dropped."""
    rng = np.random.default_rng(5)
    vocab = il.Vocab(text_tok.get_vocab_size())
    docs = [(f"d{i}", document(f"d{i}", [words(int(n)) for n in rng.integers(0, 50, 3)],
                               rng.integers(0, 3, 3).tolist())) for i in range(25)]
    docs.append(("huge", [{"text": "a cat"}, {"image": "huge/img_00", "alt": None, "meta": {}}]))
    head = il.header(vocab, 40, 2, "placeholders", 30, "tok", None)
    manifest = il.pack_documents(docs, str(tmp_path / "streamed"), il.text_encoder(text_tok), head,
                                 samples_per_shard=4, holdout=0.0)
    packed = il.pack(flat_docs(text_tok, docs, vocab, slots=30), vocab, seq_len=40, max_images=2)
    batch = il.write_interleaved(str(tmp_path / "batch"), packed.sequences, head, packed.padding_share,
                                 samples_per_shard=4)
    assert [r["n"] for r in manifest["shards"]] == [r["n"] for r in batch["shards"]]
    assert manifest["padding_share"] == batch["padding_share"] and "holdout" not in batch
    assert manifest["holdout"] == {"fraction": 0.0, "seed": 0, "by": "document", "n": {"train": batch["n"],
                                                                                     "heldout": 0}}
    streamed = [s for i in range(len(manifest["shards"])) for s in il.read_shard(str(tmp_path / "streamed"), manifest, i)]
    assert [(k, t.tolist(), m) for k, t, m in streamed] == [
        (il.sequence_key(i), seq.tokens.tolist(), {**seq.meta(), "split": "train"})
        for i, seq in enumerate(packed.sequences)]
    assert manifest["stats"]["images_too_long"] == [] and manifest["stats"]["documents"] == 26
    head = il.header(vocab, 30, 2, "placeholders", 30, "tok", None)  # 32-token image blocks: all too long
    manifest = il.pack_documents(docs, str(tmp_path / "short"), il.text_encoder(text_tok), head)
    assert manifest["stats"]["images"] == 0 and "huge/img_00" in manifest["stats"]["images_too_long"]
    assert il.verify_interleaved(str(tmp_path / "short"))["problems"] == []


def test_a_document_store_packs_its_kept_documents(text_tok, tmp_path):
    """stored_documents reads an ingested MMC4 corpus (ok documents; a filter's kept ones) for pack_documents."""
    from omnimill.engine.documents import ingest_documents
    from omnimill.store.documents import DocumentStore

    lines = [{"text_list": [f"a cat sits {i}", "the dog runs"],
              "image_info": [{"raw_url": f"https://x.org/{i}.jpg", "matched_text_index": 1}] * (i % 3)}
             for i in range(7)] + ["{not json"]
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    store = str(tmp_path / "docs.zarr")
    ingest_documents(str(corpus), store, workers=1, progress=False, docs_per_unit=3)
    docs = list(il.stored_documents(store))
    assert [k for k, _ in docs] == [f"docs_{i:07d}" for i in range(7)]  # the malformed line is left out
    assert docs[2][1][0] == {"text": "a cat sits 2"} and docs[2][1][1]["image"] == "docs_0000002/img_00"
    kept = [i % 3 > 0 for i in range(7)] + [False]  # a filter's verdict, written as a filter run writes it
    reasons = ["" if k else "min_images" for k in kept]
    DocumentStore.open(store, "r+").write_filter("some", {"min_images": 1}, kept, reasons)
    kept = [k for k, _ in il.stored_documents(store, "some")]
    assert kept == [f"docs_{i:07d}" for i in range(7) if i % 3]
    with pytest.raises(UserError, match="no filter 'none'"):
        next(il.stored_documents(store, "none"))
    vocab = il.Vocab(text_tok.get_vocab_size())
    head = il.header(vocab, 32, 16, "placeholders", 4, "tok", None)
    manifest = il.pack_documents(il.stored_documents(store, "some"), str(tmp_path / "packed"),
                                 il.text_encoder(text_tok), head)
    assert manifest["stats"]["documents"] == 4 and manifest["stats"]["images"] == sum(i % 3 for i in range(7))
    assert il.verify_interleaved(str(tmp_path / "packed"))["problems"] == []
    by_paths = il.pack_store(store, str(tmp_path / "by_paths"), text_tok, "tok", slots=4, filter_name="some",
                             seq_len=32)
    assert by_paths["shards"] == manifest["shards"] and by_paths["v_text"] == text_tok.get_vocab_size()
    with pytest.raises(UserError, match="inside the document store"):
        il.pack_store(store, store + "/packed", text_tok, "tok", slots=4)
    with pytest.raises(UserError, match="one of them"):
        il.pack_store(store, str(tmp_path / "neither"), text_tok, "tok")


def test_a_set_packed_in_parts(text_tok, tmp_path):
    """Parts pack on their own, in any order, and finish_parts joins them into one verified, streamable set."""
    rng = np.random.default_rng(9)
    vocab = il.Vocab(text_tok.get_vocab_size())
    docs = [(f"d{i:02d}", document(f"d{i:02d}", [words(int(n)) for n in rng.integers(0, 50, 3)],
                                   rng.integers(0, 3, 2).tolist())) for i in range(30)]
    head = il.header(vocab, 48, 3, "placeholders", 6, "tok", None)
    out = str(tmp_path / "parts")
    il.prepare_set(out)
    enc = il.text_encoder(text_tok)
    rows = [il.pack_part(docs[10 * p:10 * p + 10], out, p, enc, head, samples_per_shard=4, holdout=0.0)
            for p in (2, 0, 1)]
    with pytest.raises(UserError, match="pack it again"):
        il.finish_parts(out, head, rows)  # split with 0.0, finished as 0.05
    manifest = il.finish_parts(out, head, rows, holdout=0.0)
    assert [r["url"] for r in manifest["shards"]][:2] == ["part-000000-000000.tar", "part-000000-000001.tar"]
    assert manifest["stats"]["documents"] == 30 and il.verify_interleaved(out)["problems"] == []
    streamed = [s for s in il.InterleavedDataset(out, shuffle=False, epochs=1)]
    assert streamed[0]["key"] == "p000000s000000000" and len({s["key"] for s in streamed}) == manifest["n"]
    contents = [s["tokens"][:s["n_content"]].tolist() for s in streamed]
    alone = [il.pack(flat_docs(text_tok, docs[10 * p:10 * p + 10], vocab, slots=6), vocab, 48, 3) for p in range(3)]
    assert contents == [seq.tokens[:seq.n_content].tolist() for packed in alone for seq in packed.sequences]
    pads = sum(48 - seq.n_content for packed in alone for seq in packed.sequences)
    assert manifest["padding_share"] == round(pads / (48 * manifest["n"]), 6)
    with pytest.raises(UserError, match="listed twice"):
        il.finish_parts(out, head, rows + rows[:1], holdout=0.0)
    il.prepare_set(out, force=True)  # removes the parts' shards and the manifest
    assert list((tmp_path / "parts").iterdir()) == []


def test_verify_checks_keys_and_the_padding_share(text_tok, tmp_path):
    out, manifest, _ = packed_set(text_tok, tmp_path)
    path = tmp_path / "interleaved" / "manifest.json"
    path.write_text(json.dumps({**manifest, "padding_share": manifest["padding_share"] + 0.01}))
    assert il.verify_interleaved(out)["problems"][0].startswith("padding share")
    twice = {**manifest, "shards": manifest["shards"] + manifest["shards"][:1], "n": manifest["n"] + 7}
    path.write_text(json.dumps(twice))
    problems = il.verify_interleaved(out)["problems"]
    assert len(problems) == 7 and all("also in an earlier shard" in p for p in problems)


# ---------------------------------------------------------------------------------------------- held-out split
def split_corpus(text_tok, tmp_path, holdout=0.3, per_shard=3, seed=0):
    """40 documents packed with a held-out share; the first of each split is long enough to span 5+
    sequences."""
    from omnimill.store.base import held_out

    rng = np.random.default_rng(11)
    docs = [(f"doc{i:03d}", document(f"doc{i:03d}", [words(int(n)) for n in rng.integers(0, 40, 3)],
                                     rng.integers(0, 3, rng.integers(0, 4)).tolist())) for i in range(40)]
    mask = held_out([k for k, _ in docs], holdout, seed).tolist()
    for i in {mask.index(h) for h in set(mask)}:
        docs[i] = (docs[i][0], document(docs[i][0], [words(150), words(150)], [0]))
    head = il.header(il.Vocab(text_tok.get_vocab_size()), 48, 3, "placeholders", 6, "tok", None)
    out = str(tmp_path / "split")
    manifest = il.pack_documents(docs, out, il.text_encoder(text_tok), head, samples_per_shard=per_shard,
                                 holdout=holdout, seed=seed)
    return out, manifest, docs


def test_documents_are_split_by_key_before_packing(text_tok, tmp_path):
    """Every document is wholly in one split (long ones too), the split is store.base.held_out on DOC_KEY,
    each shard and sequence says its split, and the manifest counts them."""
    from omnimill.store.base import held_out

    out, manifest, docs = split_corpus(text_tok, tmp_path, seed=1)
    keys = [k for k, _ in docs]
    expected = {k: "heldout" if h else "train" for k, h in zip(keys, held_out(keys, 0.3, 1))}
    assert 5 <= sum(v == "heldout" for v in expected.values()) <= 20
    long = [k for k, doc in docs if len(doc) == 3 and len(doc[0]["text"]) > 400]
    assert sorted(expected[k] for k in long) == ["heldout", "train"]
    sequences = [(row, meta) for i, row in enumerate(manifest["shards"])
                 for _, _, meta in il.read_shard(out, manifest, i)]
    assert all(meta["split"] == row["split"] for row, meta in sequences)
    for key in keys:
        splits = [meta["split"] for _, meta in sequences if key in meta["docs"]]
        assert splits and set(splits) == {expected[key]}, key
    assert all(sum(k in meta["docs"] for _, meta in sequences) >= 5 for k in long)
    assert manifest["holdout"] == {"fraction": 0.3, "seed": 1, "by": "document", "n": {
        name: sum(meta["split"] == name for _, meta in sequences) for name in il.SPLITS}}
    assert manifest["stats"]["documents_by_split"] == {name: list(expected.values()).count(name) for name in il.SPLITS}
    splits = [row["split"] for row in manifest["shards"]]
    assert splits == sorted(splits, key=il.SPLITS.index)  # train shards first, then held-out ones
    # a split's sequences in manifest order are its packing order: a long document is in consecutive ones
    for k in long:
        same = [meta["docs"] for _, meta in sequences if meta["split"] == expected[k]]
        spans = [i for i, d in enumerate(same) if k in d]
        assert spans == list(range(spans[0], spans[0] + len(spans)))
    assert il.verify_interleaved(out)["problems"] == []


def test_verify_checks_the_splits(text_tok, tmp_path):
    out, manifest, _ = split_corpus(text_tok, tmp_path)
    path = tmp_path / "split" / "manifest.json"
    counts = manifest["holdout"]["n"]
    path.write_text(json.dumps({**manifest, "holdout": {**manifest["holdout"], "n": {
        "train": counts["train"] + 1, "heldout": counts["heldout"] - 1}}}))
    assert il.verify_interleaved(out)["problems"][0].startswith("sequences per split")
    moved = [{**row, "split": "train"} for row in manifest["shards"]]  # a held-out shard listed as train
    path.write_text(json.dumps({**manifest, "shards": moved}))
    problems = il.verify_interleaved(out)["problems"]
    assert problems and all("split 'heldout' in a shard of split 'train'" in p for p in problems)


def test_dataset_reads_one_split_and_resumes_within_it(text_tok, tmp_path):
    out, manifest, _ = split_corpus(text_tok, tmp_path)
    every = {s["key"]: s["split"] for s in il.InterleavedDataset(out, epochs=1)}
    assert len(every) == manifest["n"]
    for name in il.SPLITS:
        n = manifest["holdout"]["n"][name]
        reference = take(iter(il.InterleavedDataset(out, seed=2, split=name)), 2 * n + 3)
        assert sorted(reference[:n]) == sorted(k for k, v in every.items() if v == name)
        for stop in (1, n - 1, n + 2):
            first = il.InterleavedDataset(out, seed=2, split=name)
            it = iter(first)
            assert take(it, stop) == reference[:stop]
            state = json.loads(json.dumps(first.state_dict()))
            again = il.InterleavedDataset(out, seed=2, split=name)
            again.load_state_dict(state)
            assert take(iter(again), 2 * n + 3 - stop) == reference[stop:]
        other = "train" if name == "heldout" else "heldout"
        with pytest.raises(UserError, match="another interleaved set or setup"):
            il.InterleavedDataset(out, seed=2, split=other).load_state_dict(state)
    ranks = [[s["key"] for s in il.InterleavedDataset(out, split="heldout", rank=r, world_size=2, epochs=1)]
             for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == sorted(k for k, v in every.items() if v == "heldout")
    with pytest.raises(UserError, match="split is one of"):
        il.InterleavedDataset(out, split="test")


def test_nothing_held_out_and_old_sets(text_tok, tmp_path):
    """holdout 0 leaves the held-out split empty (refused when asked for); a set packed before splits by
    document (no "holdout") reads as before and refuses a split with one line that says what to do."""
    out, manifest, _ = split_corpus(text_tok, tmp_path, holdout=0.0)
    assert manifest["holdout"]["n"]["heldout"] == 0 and {r["split"] for r in manifest["shards"]} == {"train"}
    assert il.verify_interleaved(out)["problems"] == []
    with pytest.raises(UserError, match="holds no heldout sequences"):
        il.InterleavedDataset(out, split="heldout")
    with pytest.raises(UserError, match=r"in \[0, 1\)"):
        split_corpus(text_tok, tmp_path / "bad", holdout=1.0)
    old, old_manifest, _ = packed_set(text_tok, tmp_path)
    assert "holdout" not in old_manifest and il.verify_interleaved(old)["problems"] == []
    assert len(list(il.InterleavedDataset(old, epochs=1))) == old_manifest["n"]
    with pytest.raises(UserError, match="packed before splits by document"):
        il.InterleavedDataset(old, split="train")


def test_parts_split_by_document_too(text_tok, tmp_path):
    rng = np.random.default_rng(4)
    docs = [(f"d{i:02d}", document(f"d{i:02d}", [words(int(n)) for n in rng.integers(0, 50, 3)], [0]))
            for i in range(30)]
    head = il.header(il.Vocab(text_tok.get_vocab_size()), 48, 3, "placeholders", 6, "tok", None)
    out = str(tmp_path / "parts")
    il.prepare_set(out)
    enc = il.text_encoder(text_tok)
    rows = [il.pack_part(docs[10 * p:10 * p + 10], out, p, enc, head, samples_per_shard=2, holdout=0.25, seed=3)
            for p in range(3)]
    manifest = il.finish_parts(out, head, rows, holdout=0.25, seed=3)
    assert il.verify_interleaved(out)["problems"] == []
    splits = [(r["split"], r["url"]) for r in manifest["shards"]]
    assert splits == sorted(splits, key=lambda s: (il.SPLITS.index(s[0]), s[1]))  # by split, then part order
    assert manifest["holdout"]["n"] == {name: sum(r["holdout"]["n"][name] for r in rows) for name in il.SPLITS}
    assert manifest["holdout"]["n"]["heldout"] > 0


# ---------------------------------------------------------------------------------------------- captions
@pytest.fixture(scope="module")
def captioned(tmp_path_factory, tiny_blip):
    """A document store (WDS: local images with and without alt text, URL images never labelled) and a label
    store of its local images labelled by a tiny real BLIP `captioner` (and `metadata`, no captions)."""
    from test_caption import CAPTION
    from test_documents import FAST, jpeg_bytes, wds

    from omnimill.engine.documents import ingest_documents
    from omnimill.engine.label import label
    from omnimill.labelers.base import TeacherSpec

    tmp = tmp_path_factory.mktemp("captioned")
    docs = {"d0": ({"segments": [{"text": "a cat sits"}, {"image": "img0.jpg", "alt": "a red cat"},
                                 {"text": "on the mat"}, {"image": "img1.jpg"}]},
                   {"img0.jpg": jpeg_bytes(0), "img1.jpg": jpeg_bytes(1)}),
            "d1": ({"segments": [{"text": "the dog"}, {"image": "https://x.org/1.jpg", "alt": "a remote dog"},
                                 {"image": "https://x.org/2.jpg"}, {"text": "runs in the park"}]}, {})}
    store = str(tmp / "docs.zarr")
    done = ingest_documents(str(wds(tmp, docs)), store, **FAST)
    labels = str(tmp / "labels.zarr")
    result = label(done.local_corpus, labels, ["metadata", TeacherSpec(CAPTION, str(tiny_blip),
                                                                       {"max_new_tokens": 8})],
                   workers=1, unit_size=4, view_size=32, progress=False)
    assert result.exit_code == 0
    return store, labels


@pytest.mark.parametrize("rule", ["none", "alt", "synthetic", "both"])
def test_captions_follow_their_images_as_the_rule_says(rule, captioned, text_tok, tmp_path):
    from omnimill.store.labels import LabelStore

    store, labels = captioned
    synthetic = il.StoreCaptions(labels)
    generated = {k: synthetic.get(k) for k in ("d0/img_00", "d0/img_01")}
    assert all(generated.values()) and synthetic.get("d1/img_00") is None  # URL images: never labelled
    alt = {"d0/img_00": "a red cat", "d1/img_00": "a remote dog"}
    expected = {  # what each image gets under each rule: the fallbacks of Captions
        "none": dict.fromkeys(["d0/img_00", "d0/img_01", "d1/img_00", "d1/img_01"], "none"),
        "alt": {"d0/img_00": "alt", "d0/img_01": "none", "d1/img_00": "alt", "d1/img_01": "none"},
        "synthetic": {"d0/img_00": "synthetic", "d0/img_01": "synthetic", "d1/img_00": "none", "d1/img_01": "none"},
        "both": {"d0/img_00": "both", "d0/img_01": "synthetic", "d1/img_00": "alt", "d1/img_01": "none"},
    }[rule]
    sep = il.CAPTION_SEPARATOR  # between alt and synthetic, and after every caption
    text = {"alt": lambda k: alt[k] + sep, "synthetic": lambda k: generated[k] + sep, "none": lambda k: "",
            "both": lambda k: alt[k] + sep + generated[k] + sep}
    out = str(tmp_path / "packed")
    manifest = il.pack_store(store, out, text_tok, "tok", slots=3, seq_len=512, holdout=0.0, captions=rule,
                             caption_labels=labels if rule in ("synthetic", "both") else None)
    assert il.verify_interleaved(out)["problems"] == []
    (_, tokens, meta), = il.read_shard(out, manifest, 0)  # both documents fit one sequence
    assert meta.get("captions") == (None if rule == "none" else expected)
    # the sequence is the documents with each caption as a text segment right after its image
    enc, vocab = il.text_encoder(text_tok), il.vocab_of(manifest)
    with_captions = []
    for doc_key, segments in il.stored_documents(store):
        spliced = []
        for segment in segments:
            spliced.append(segment)
            if "image" in segment:
                spliced.append({"text": text[expected[segment["image"]]](segment["image"])})
        with_captions.append(il.interleave(spliced, enc, vocab, slots=3)[0])
    assert tokens[:meta["n_content"]].tolist() == np.concatenate(with_captions).tolist()
    assert manifest["stats"]["captions"] == {source: list(expected.values()).count(source)
                                             for source in il.CAPTION_SOURCES}
    record = {"rule": rule, "separator": "\n"}
    if rule in ("synthetic", "both"):
        record.update(labels=labels, labels_uuid=LabelStore.open(labels).uuid, teacher="captioner",
                      labels_id=LabelStore.open(labels).teacher_id("captioner"))
    assert manifest["captions"] == record


def test_caption_options_are_checked(captioned, text_tok, tmp_path):
    store, labels = captioned
    for captions, caption_labels, message in [("synthetic", None, "give --caption-labels LABEL_STORE, the docu"),
                                              ("alt", labels, "read only with --captions synthetic or both"),
                                              ("all", None, "captions is one of")]:
        with pytest.raises(UserError, match=message):
            il.pack_store(store, str(tmp_path / "p"), text_tok, "tok", slots=3, captions=captions,
                          caption_labels=caption_labels)
    with pytest.raises(UserError, match="no per-image captions"):
        il.StoreCaptions(labels, teacher="metadata")
    with pytest.raises(UserError, match="no teacher clip"):
        il.StoreCaptions(labels, teacher="clip")
    assert not (tmp_path / "p").exists()


def test_a_dropped_image_takes_its_caption_with_it(text_tok):
    """An image too long for the sequence and one without tokens are dropped with their captions."""
    vocab = il.Vocab(text_tok.get_vocab_size(), V_IMAGE)
    enc = il.text_encoder(text_tok)
    doc = [{"text": "a cat"}, {"image": "d/img_00", "alt": "first"}, {"image": "d/img_01", "alt": "second"},
           {"image": "d/img_02", "alt": "third"}]
    image_tokens = {"d/img_00": np.zeros((G, G), int), "d/img_01": np.zeros((8, 8), int)}  # 66-token block
    chosen, too_long, tally = {}, [], Counter()
    ids, images = il.interleave(doc, enc, vocab, image_tokens=image_tokens, tally=tally,
                                captions=il.Captions("alt"), chosen=chosen, max_block=40, too_long=too_long)
    assert images == ["d/img_00"] and too_long == ["d/img_01"] and tally["images_without_tokens"] == 1
    assert chosen == {"d/img_00": "alt"}
    assert ids.tolist() == [*enc("a cat"), vocab.BOI, *[vocab.v_text] * 16, vocab.EOI, *enc("first\n"), vocab.EOD]
