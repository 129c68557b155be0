"""The training loader: splits, shuffles, mixes, pads with masks, and resumes exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnimill.engine.text import write_text_shards
from omnimill.errors import UserError
from omnimill.shards.loader import TokenDataset, TokenLoader, buffered_shuffle
from omnimill.shards.wds import export_wds
from omnimill.store.tokens import TokenStore


@pytest.fixture(scope="module")
def shards(token_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("loader") / "shards"
    export_wds(token_data["tokens"], str(out), samples_per_shard=5)
    return str(out)


@pytest.fixture(scope="module")
def text_shards(token_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("loader") / "text"
    texts = [f"document number {i} about a blue boat" for i in range(30)]
    write_text_shards(texts, [f"doc{i}" for i in range(30)], token_data["tokenizers"]["caption"], str(out),
                      samples_per_shard=6)
    return str(out)


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_buffered_shuffle_is_a_seeded_permutation():
    a = buffered_shuffle(1000, 64, np.random.default_rng(1))
    assert sorted(a) == list(range(1000)) and (a != np.arange(1000)).any()
    assert (a == buffered_shuffle(1000, 64, np.random.default_rng(1))).all()
    assert (buffered_shuffle(10, 0, np.random.default_rng(1)) == np.arange(10)).all()


@pytest.mark.parametrize("which", ["tokens", "shards"])
def test_one_epoch_has_every_sample_once_with_its_tokens(token_data, shards, which):
    uri = token_data["tokens"] if which == "tokens" else shards
    loader = TokenLoader(TokenDataset(uri), batch_size=7, epochs=1, shuffle_buffer=16, seed=3)
    store = TokenStore.open(token_data["tokens"])
    keys = list(store.group["keys"][:])
    rgb, rgb_ok = store.group["rgb_image/tokens"][:], store.group["rgb_image/ok"][:]
    caption, pad = store.group["caption/tokens"][:], store.tokenizer_info("caption")["pad_id"]
    seen = []
    for batch in loader:
        assert set(batch["tokens"]) == {"caption", "palette", "rgb_image"}
        for i, key in enumerate(batch["keys"]):
            j, crop = keys.index(key), int(batch["crop"][i])
            assert int(batch["index"][i]) == j
            present = bool(batch["present"]["rgb_image"][i])
            assert present == bool(rgb_ok[j])
            if present:
                assert (batch["tokens"]["rgb_image"][i].numpy() == rgb[j, crop]).all()
                assert batch["masks"]["rgb_image"][i].all()
            else:
                assert not batch["masks"]["rgb_image"][i].any()
            assert (batch["tokens"]["caption"][i].numpy() == caption[j, crop]).all()
            assert (batch["masks"]["caption"][i].numpy() == (caption[j, crop] != pad)).all()
        seen += batch["keys"]
    assert sorted(seen) == sorted(keys) and seen != keys  # every sample once, shuffled
    assert {len(b) for b in [seen[i:i + 7] for i in range(0, 40, 7)]} == {7, 5}


def test_ranks_and_workers_split_without_overlap(shards):
    epoch = []
    for rank in range(2):
        loader = TokenLoader(TokenDataset(shards), batch_size=4, epochs=1, num_workers=2, rank=rank, world_size=2)
        keys = [k for b in loader for k in b["keys"]]
        assert keys and len(set(keys)) == len(keys)
        epoch.append(set(keys))
    assert not epoch[0] & epoch[1] and len(epoch[0] | epoch[1]) == 40


def test_epochs_reshuffle_and_crops_vary(shards):
    loader = TokenLoader(TokenDataset(shards), batch_size=40, seed=0, shuffle_buffer=40)
    first, second = take(loader, 2)
    assert sorted(first["keys"]) == sorted(second["keys"]) and first["keys"] != second["keys"]
    assert set(first["crop"].tolist()) == {0, 1}
    whole = TokenLoader(TokenDataset(shards), batch_size=40, epochs=1, crops="first")
    assert set(next(iter(whole))["crop"].tolist()) == {0}


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_gives_exactly_the_batches_that_would_have_come(token_data, shards, text_shards, workers):
    def make():
        return TokenLoader([TokenDataset(shards), TokenDataset(text_shards)], weights=[3, 1], batch_size=6,
                           shuffle_buffer=8, num_workers=workers, seed=5)

    straight = make()
    batches = take(straight, 11)  # crosses epochs of both datasets
    interrupted = make()
    take(interrupted, 4)
    state = interrupted.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    rest = take(resumed, 7)
    for a, b in zip(batches[4:], rest):
        assert a["keys"] == b["keys"]
        for m in a["tokens"]:
            assert torch.equal(a["tokens"][m], b["tokens"][m]) and torch.equal(a["masks"][m], b["masks"][m])
    with pytest.raises(UserError, match="another loader setup"):
        other = TokenLoader(TokenDataset(shards), batch_size=6, num_workers=workers)
        other.load_state_dict(state)


def test_mixture_marks_absent_modalities_and_follows_weights(shards, text_shards):
    loader = TokenLoader([TokenDataset(shards), TokenDataset(text_shards)], weights=[1, 3], batch_size=50, seed=1)
    batch = take(loader, 4)
    dataset = torch.cat([b["dataset"] for b in batch])
    assert 0.6 < (dataset == 1).float().mean() < 0.9  # 3:1 by samples
    for b in batch:
        text = b["dataset"] == 1
        assert not b["present"]["rgb_image"][text].any() and not b["masks"]["palette"][text].any()
        assert b["present"]["caption"][text].all() and b["masks"]["caption"][text].any(dim=1).all()
        assert all(k.startswith("doc") for k, t in zip(b["keys"], text) if t)


def test_caption_only_view_of_a_store_in_a_mixture(token_data, shards):
    captions = TokenDataset(token_data["tokens"], modalities=["caption"], name="captions")
    loader = TokenLoader([TokenDataset(shards), captions], weights=[1, 1], batch_size=40, seed=2)
    batch = next(iter(loader))
    only_text = batch["dataset"] == 1
    assert only_text.any() and batch["present"]["caption"][only_text].all()
    assert not batch["present"]["rgb_image"][only_text].any() and not batch["present"]["palette"][only_text].any()


def test_wrong_setups_fail_fast(token_data, shards, tmp_path):
    with pytest.raises(UserError, match="neither a token store nor a shard set"):
        TokenDataset(str(tmp_path))
    with pytest.raises(UserError, match="fewer than the 16 slots"):
        TokenLoader(TokenDataset(shards), batch_size=4, num_workers=8, world_size=2, rank=0)
    with pytest.raises(UserError, match="weights"):
        TokenLoader([TokenDataset(shards)], batch_size=4, weights=[1, 2])
    with pytest.raises(UserError, match="no modality depth"):
        TokenDataset(shards, modalities=["depth"])


def test_train_and_heldout_splits_partition_the_samples(shards):
    def keys(split):
        loader = TokenLoader(TokenDataset(shards, split=split, holdout=0.25), batch_size=8, epochs=1)
        return {k for b in loader for k in b["keys"]}

    train, heldout = keys("train"), keys("heldout")
    assert train and heldout and not train & heldout and len(train | heldout) == 40
    with pytest.raises(UserError, match="needs 0 < holdout < 1"):
        TokenDataset(shards, split="train")


def test_images_of_documents_split_with_their_document(shards):
    """Pairs made from a packed set's own document images: a held-out document's images are held out too."""
    from omnimill.corpus.documents import document_of
    from omnimill.store.base import held_out

    docs = [f"web_{i:07d}" for i in range(400)]
    keys = np.array([f"{d}/img_{k:02d}" for d in docs for k in range(3)] + ["beach/0001", "img_3", "/img_01"])
    assert document_of("web_0000001/img_03") == "web_0000001" and document_of("beach/0001") is None
    assert document_of("/img_01") is None and document_of("a/img_x") is None
    for split in ("train", "heldout"):
        mask = TokenDataset(shards, split=split, holdout=0.5, holdout_seed=3,
                            document_split=(0.2, 7)).keep_mask(keys)
        by_doc = held_out(docs, 0.2, 7) == (split == "heldout")
        assert mask[:1200].tolist() == np.repeat(by_doc, 3).tolist()  # the packed set's rule, not 0.5 / seed 3
        assert mask[1200:].tolist() == (held_out(keys[1200:], 0.5, 3) == (split == "heldout")).tolist()
    plain = TokenDataset(shards, split="heldout", holdout=0.2, holdout_seed=7).keep_mask(keys[:1200])
    assert plain.tolist() != np.repeat(held_out(docs, 0.2, 7), 3).tolist()  # by image key, a document's images part


def test_a_damaged_shard_stops_the_loader_with_its_name(token_data, tmp_path):
    import tarfile

    out = tmp_path / "shards"
    export_wds(token_data["tokens"], str(out), samples_per_shard=10)
    tar = out / "shard-000001.tar"
    with tarfile.open(tar) as t:
        member = next(m for m in t.getmembers() if m.name.endswith(".rgb_image.npy"))
    data = bytearray(tar.read_bytes())
    data[member.offset_data + member.size - 1] ^= 0x10  # a token, not a header
    tar.write_bytes(bytes(data))
    with pytest.raises(UserError, match="shard-000001.tar: sample -: rgb_image tokens damaged"):
        for _ in TokenLoader(TokenDataset(str(out)), batch_size=8, epochs=1):
            pass
