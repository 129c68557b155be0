"""The causal objective (`--objective causal`) on packed interleaved shards: the causal mask, PAD and image
targets in the loss, a task it must learn (the text after an image copies the image's tokens) with held-out
text loss well below the unigram baseline, resume identical to a straight run, and continuing a document.
MM1's mixture: the packed set with a pair shard set (the caption copies the image) and a text shard set
(runs of successive words), each kind's batches in the log, held-out loss per source below its unigram,
resume identical, and the refusals of sets made by other tokenizers.

The shards are synthetic documents packed and written by shards/interleave.py (omnimill.interleaved/1); the
pair and text sets are written by shards/wds.write_shard with a real (word-level) text tokenizer's ids."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import invoke, one_line_error
from omnimill.errors import UserError
from omnimill.train.config import TrainConfig, apply_overrides, load_config

V_TEXT, V_IMAGE, GRID = 16, 8, 4  # text ids, image ids, tokens per image (2 x 2)
BOI, EOI, PAD, IMG_SLOT, EOD = range(V_TEXT + V_IMAGE, V_TEXT + V_IMAGE + 5)
SEQ_LEN = 32
KEYS = [f"s{i:09d}" for i in range(401)]  # the sequences' keys
TINY = ["dim=32", "decoder_layers=2", "heads=2", "batch_size=16", "holdout=0.2", "warmup_steps=10",
        "eval_batches=4", "log_every=10", "objective=causal"]


def document(rng: np.random.Generator, words: int | None = None) -> list[int]:
    """5 random text ids, an image of 4 random image ids, then 4 text ids that copy the image (image id
    V_TEXT + j -> text id j), EOD: 16 tokens, of which the 4 copies are known only from the image. With
    `words`: the 5 text ids are a run of successive ids (a random start, then +1 modulo `words`)."""
    image = rng.integers(0, V_IMAGE, GRID)
    text = rng.integers(0, V_TEXT, 5) if words is None else successive(rng, words, 5)
    return [*text, BOI, *(V_TEXT + image), EOI, *image, EOD]


def successive(rng: np.random.Generator, words: int, n: int) -> np.ndarray:
    return (rng.integers(0, words) + np.arange(n)) % words


def write_packed(out: Path, n_docs: int = 801, seed: int = 0) -> str:
    """n_docs documents packed by shards/interleave.py into sequences of 32 (two whole documents each; the
    last holds one, then PAD), 100 sequences per shard."""
    from omnimill.shards.interleave import Vocab, header, pack, write_interleaved

    rng = np.random.default_rng(seed)
    vocab = Vocab(V_TEXT, V_IMAGE)
    docs = [(f"d{i:06d}", np.array(document(rng)), [f"d{i:06d}/img_00"]) for i in range(n_docs)]
    packed = pack(docs, vocab, SEQ_LEN)
    head = header(vocab, SEQ_LEN, 16, "tokens", None, "", None)
    write_interleaved(str(out), packed.sequences, head, packed.padding_share, samples_per_shard=100)
    return str(out)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on one thread: two threads on a busy 2-core machine made a step 0.8 s instead of 0.03 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> str:
    return write_packed(tmp_path_factory.mktemp("causal") / "packed")


def tiny(data: str, *flags: str) -> TrainConfig:
    c = TrainConfig()
    apply_overrides(c, [f"datasets={data}", *TINY, *flags])
    return c


def test_the_objective_is_a_setting():
    assert load_config(None, ["--objective=causal", "--causal_image_loss=false"]).causal_image_loss is False
    assert TrainConfig().objective == "4m"
    with pytest.raises(UserError, match="objective='gpt': it is one of 4m, causal"):
        load_config(None, ["--objective=gpt"])


def test_causal_mask_pad_and_image_targets(packed):
    from omnimill.train.causal import PackedLoader, causal_loss, open_packed, token_kinds
    from omnimill.train.model import CausalModel

    manifest = open_packed(packed)
    config = tiny(packed)
    torch.manual_seed(0)
    model = CausalModel(config.model, manifest["vocab"], SEQ_LEN)
    last = next(iter(PackedLoader(packed, "train", 0.0, 0, batch_size=401, shuffle=False)))["tokens"][-1]
    assert (last[16:] == PAD).all() and (last[:16] != PAD).all()  # the 801st document alone, then PAD
    rng = np.random.default_rng(1)
    tokens = torch.tensor([document(rng) + [PAD] * 16 for _ in range(4)])
    # the logits at t see tokens 0..t only: changing token 10 leaves positions 0..9 as they were
    changed = tokens.clone()
    changed[:, 10] = (changed[:, 10] + 1) % V_TEXT
    a, b = model(tokens), model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6) and not torch.allclose(a[:, 10:], b[:, 10:])

    kinds = token_kinds(tokens[:, 1:], manifest)
    loss, per = causal_loss(model, tokens, manifest)
    # targets per row: 9 text, 4 image, 3 markers less the first token (text, no target); the 16 PAD never count
    assert {k: n for k, (_, n) in per.items()} == {"text": 4 * 8, "image": 4 * 4, "marker": 4 * 3}
    assert int((kinds >= 0).sum()) == 4 * 15
    assert float(loss.detach()) == pytest.approx(sum(float(s) for s, _ in per.values()) / (4 * 15), rel=1e-5)
    without, per_without = causal_loss(model, tokens, manifest, image_loss=False)
    assert {k: float(v[0]) for k, v in per_without.items()} == {k: float(v[0]) for k, v in per.items()}
    assert float(without.detach()) == pytest.approx((float(per["text"][0]) + float(per["marker"][0])) / (4 * 11),
                                                    rel=1e-5)


def test_loader_splits_by_key_and_resumes_at_its_position(packed):
    from omnimill.store.base import held_out
    from omnimill.train.causal import PackedLoader

    train = [k for b in PackedLoader(packed, "train", 0.2, 0, 16, epochs=1) for k in b["keys"]]
    heldout = [k for b in PackedLoader(packed, "heldout", 0.2, 0, 16, epochs=1) for k in b["keys"]]
    assert sorted(train + heldout) == KEYS and 40 < len(heldout) < 120
    assert held_out(heldout, 0.2, 0).all() and not held_out(train, 0.2, 0).any()
    straight = PackedLoader(packed, "train", 0.2, 0, 16)
    keys = [b["keys"] for _, b in zip(range(30), straight)]  # past one epoch (~20 batches)
    first = PackedLoader(packed, "train", 0.2, 0, 16)
    for _, _ in zip(range(12), first):
        pass
    resumed = PackedLoader(packed, "train", 0.2, 0, 16)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert [b["keys"] for _, b in zip(range(18), resumed)] == keys[12:]
    assert keys[0] != keys[20]  # the second epoch reads in another order
    with pytest.raises(UserError, match="no heldout sequences"):
        next(iter(PackedLoader(packed, "heldout", 0.0, 0, 16)))


def test_it_learns_what_follows_an_image_and_continues_a_held_out_document(packed, tmp_path):
    """The 4 text ids after an image copy its tokens: held-out text loss falls well below unigram (the rest
    of the text is random: a perfect model reaches about half the unigram loss); image tokens are random, so
    the model cannot beat unigram there. Then the copies are continued from a held-out document's prefix."""
    from omnimill.store.base import held_out
    from omnimill.train.causal import continue_document
    from omnimill.train.loop import train

    result = train(tiny(packed, "steps=300", "eval_every=300", "lr=3e-3", "min_lr=3e-3"), tmp_path / "run",
                   progress=False)
    print("held-out", result["heldout"], "unigram", result["baseline"])
    heldout, baseline = result["heldout"], result["baseline"]
    assert set(heldout) == set(baseline) == {"text", "image", "marker"}
    assert heldout["text"] < 0.75 * baseline["text"]
    assert heldout["image"] > 0.9 * np.log(V_IMAGE)  # random: nothing to learn
    assert heldout["marker"] < 0.3 * baseline["marker"]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["heldout"] == heldout and log[-1]["baseline"] == baseline and "per_kind" in log[0]

    key = next(k for k in KEYS if held_out([k], 0.2, 0)[0])
    doc_b = f"d{2 * int(key[1:]) + 1:06d}"  # the sequence's second document
    facts = continue_document(tmp_path / "run", doc_b, new_tokens=8, prefix=11)  # through the image's EOI
    assert facts["held_out"] and facts["sequences"] == [key] and len(facts["prefix_tokens"]) == 11
    image = np.array(facts["prefix_tokens"][6:10]) - V_TEXT
    print("prefix", facts["prefix"], "| continued", facts["continuation"], "| truth", facts["truth"])
    assert facts["prefix_tokens"][10] == EOI and facts["truth_tokens"] == [*image.tolist(), EOD]
    assert facts["token_accuracy"] >= 0.75  # the copies (and EOD)
    assert facts["continuation"].startswith("<") and "[image]" in facts["prefix"]
    with pytest.raises(UserError, match="no document or sequence 'nope'"):
        continue_document(tmp_path / "run", "nope")


def test_resume_is_identical_to_a_straight_run(packed, tmp_path):
    from omnimill.train.loop import load_checkpoint, read_commit, train

    settings = tiny(packed, "steps=8", "eval_every=4", "checkpoint_every=100", "dropout=0.1")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(settings, straight, progress=False)
    train(settings, stopped, progress=False, stop_at=3)
    assert read_commit(stopped)["step"] == 3
    train(settings, stopped, progress=False)
    (a_commit, a), (b_commit, b) = load_checkpoint(straight), load_checkpoint(stopped)
    assert a_commit["step"] == b_commit["step"] == 8
    for part in ("model", "state"):  # weights; optimizer moments; the RNG that draws dropout
        assert a[part].keys() == b[part].keys()
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), name
    assert a_commit["loader"] == b_commit["loader"]
    # evaluations at steps 4 and 8 (a log record's loss averages its window, which a resume starts afresh)
    assert [h["heldout"] for h in a_commit["history"] if "heldout" in h] == \
        [h["heldout"] for h in b_commit["history"] if "heldout" in h]
    assert a_commit["packed"]["vocab"] == EOD + 1 and a_commit["modalities"] == []


def test_refusals(packed, tmp_path):
    from omnimill.train.causal import open_packed
    from omnimill.train.generate import load_run
    from omnimill.train.loop import train

    with pytest.raises(UserError, match="has no manifest.json"):
        open_packed(str(tmp_path))
    other = tmp_path / "other"
    shutil.copytree(packed, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "format": "omnimill.wds/1"}))
    with pytest.raises(UserError, match="not an interleaved shard manifest"):
        train(tiny(str(other), "steps=1"), tmp_path / "r1", progress=False)
    with pytest.raises(UserError, match="one packed set, not 2"):
        train(tiny(f"{packed},{packed}", "steps=1"), tmp_path / "r2", progress=False)
    run = tmp_path / "run"  # through the CLI: train, then generate both ways
    result = invoke("train", packed, "--out", run, *[f"--{f}" for f in TINY], "--steps=2", "--eval_batches=1")
    assert result.exit_code == 0, result.output
    assert "held-out loss below the unigram baseline for" in result.output and "token kinds" in result.output
    with pytest.raises(UserError, match="causal run: continue a document"):
        load_run(run)
    result = invoke("generate", run, "--continue", "d000001", "--tokens", 3, "--prefix", 11)
    assert result.exit_code == 0, result.output
    assert "d000001 (sequence s000000000): 11 tokens given" in result.output and "continued:" in result.output
    assert "(held out: " in result.output or "(the run trained on it" in result.output
    one_line_error(invoke("generate", run, "--key", "s000000000"), "generate needs --from, --to, --out")


def test_placeholder_documents_continue_as_words(tmp_path):
    """Real documents through interleave() in placeholder mode (3 IMG_SLOT per image) with a real BPE text
    tokenizer (byte-level BPE): IMG_SLOT targets are of kind image and leave the loss with causal_image_loss=false, and a
    continued document is printed as words through the tokenizer, images as [image]."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from omnimill.shards.interleave import Vocab, header, interleave, pack, text_encoder, write_interleaved
    from omnimill.train.causal import causal_loss, continue_document, open_packed
    from omnimill.train.loop import train
    from omnimill.train.model import CausalModel

    sentences = ["a red fox jumps over the dog", "the cat sleeps on a warm mat", "a small bird sings at dawn"]
    text = Tokenizer(models.BPE())  # byte-level BPE, as tokenize/sequence.py makes its text tokenizer
    text.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    text.decoder = decoders.ByteLevel()
    text.train_from_iterator(sentences * 10, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    (tmp_path / "tok").mkdir()
    text.save(str(tmp_path / "tok" / "tokenizer.json"))
    vocab = Vocab(text.get_vocab_size(), 0)
    encode = text_encoder(text)
    docs = []
    for i in range(60):
        document = [{"text": sentences[i % 3]}, {"image": f"d{i:06d}/img_00", "alt": None, "meta": {}},
                    {"text": sentences[(i + 1) % 3]}]
        ids, images = interleave(document, encode, vocab, slots=3)
        docs.append((f"d{i:06d}", ids, images))
    packed = pack(docs, vocab, 64)
    write_interleaved(str(tmp_path / "set"), packed.sequences, header(vocab, 64, 16, "placeholders", 3,
                                                                      str(tmp_path / "tok"), None),
                      packed.padding_share, samples_per_shard=8)
    manifest = open_packed(str(tmp_path / "set"))
    tokens = torch.from_numpy(packed.sequences[0].tokens.astype(np.int64))[None]
    model = CausalModel(tiny("x").model, manifest["vocab"], 64)
    _, per = causal_loss(model, tokens, manifest)
    slots = int((tokens[0, 1:] == vocab.IMG_SLOT).sum())
    assert per["image"][1] == slots > 0
    without, _ = causal_loss(model, tokens, manifest, image_loss=False)
    assert float(without.detach()) == pytest.approx(
        (float(per["text"][0]) + float(per["marker"][0])) / (per["text"][1] + per["marker"][1]), rel=1e-5)

    run = tmp_path / "run"
    train(tiny(str(tmp_path / "set"), "steps=2", "eval_batches=1", "causal_image_loss=false", "holdout=0.3"), run,
          progress=False)
    facts = continue_document(run, "d000004", new_tokens=4, prefix=len(encode(sentences[1])) + 5)
    assert facts["prefix"] == "the cat sleeps on a warm mat [image]"
    assert facts["truth"] == "a small bird sings at dawn ⏎" and facts["truth_tokens"][-1] == vocab.EOD
    assert len(facts["sequences"]) == 2  # cut at the end of one sequence, its end in the next: joined
    assert len(facts["tokens"]) <= 4 and isinstance(facts["continuation"], str)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="torchrun needs a POSIX host")
def test_two_processes_under_torchrun(packed, tmp_path):
    """Each rank reads its own shards (InterleavedDataset splits them), DDP averages gradients (with
    accumulation: no_sync), rank 0 writes both ranks' positions; the run resumes with both processes."""
    from omnimill.train.loop import read_commit

    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "omnimill",
               "train", packed, "--out", str(run), "--no-progress", *[f"--{f}" for f in TINY], "--grad_accum=2",
               "--steps=3", "--eval_every=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = read_commit(run)
    assert state["step"] == 3 and [s["config"][5:] for s in state["loader"]] == [[0, 2], [1, 2]]  # rank, world
    assert set(state["baseline"]) == {"text", "image", "marker"}
    resumed = subprocess.run(command[:-2] + ["--steps=4", "--eval_every=4"], capture_output=True, text=True,
                             env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_commit(run)["step"] == 4


# ---------------------------------------------------------------------------- MM1's mixture
WORDS = [f"w{i}" for i in range(13)]  # text ids 0..12; then the sequence tokenizer's specials
T_PAD, T_EOS, T_CUT = 13, 14, 15
CAPTION_L = 8
MIX = [*TINY, "num_workers=0", "shuffle_buffer=16"]


def word_tokenizer(folder: Path, specials=("<pad>", "<eos>", "<cut>")) -> Path:
    """A real tokenizer folder (a word-level HF tokenizer.json, V_TEXT ids, the sequence tokenizer's
    specials last): what the packed set and the caption modality name."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate([*WORDS, *specials])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=specials[0]))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder.mkdir(parents=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def image_tokenizer(folder: Path, grid: int = 2) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"kind": "spatial", "grid": grid, "vocab": V_IMAGE}))
    return folder


def modality_info(folder: Path, vocab: int, length: int, pad_id: int) -> dict:
    from omnimill.tokenize.base import directory_hash

    return {"kind": "test", "path": str(folder), "sha256": directory_hash(folder), "vocab_size": vocab,
            "tokens_per_sample": length, "pad_id": pad_id, "dtype": "uint16"}


def token_set(out: Path, samples: list[dict[str, np.ndarray]], info: dict[str, dict], per_shard: int = 50) -> str:
    """A token shard set (omnimill.wds/1) of the given samples, by the real shard writer."""
    from omnimill.shards.wds import FORMAT, MANIFEST, atomic_write, write_shard

    rows = []
    for first in range(0, len(samples), per_shard):
        chunk = [(f"k{i:06d}", i, np.zeros((1, 5), np.int32), {m: t[None].astype(np.uint16) for m, t in tokens.items()})
                 for i, tokens in enumerate(samples[first:first + per_shard], first)]
        rows.append(write_shard(str(out), len(rows), chunk))
    manifest = {"format": FORMAT, "n": len(samples), "n_crops": 1, "shards": rows,
                "modalities": {m: {**i, "samples": len(samples)} for m, i in info.items()}}
    atomic_write(str(out / MANIFEST), json.dumps(manifest).encode())
    return str(out)


def caption(ids) -> np.ndarray:
    """A caption row as the sequence tokenizer fits it: the ids, <eos>, <pad> to CAPTION_L."""
    return np.array([*ids, T_EOS] + [T_PAD] * (CAPTION_L - len(ids) - 1))


@pytest.fixture(scope="module")
def mixture(tmp_path_factory) -> dict:
    """The packed set (naming its text and image tokenizers; its documents' text is a run of successive
    words), a pair set (4 image tokens; the caption copies them) and a text set (6 successive words), 300
    samples each: a rule in every source that a model learns and a unigram cannot."""
    from omnimill.shards.interleave import Vocab, header, pack, write_interleaved

    root = tmp_path_factory.mktemp("mixture")
    text_tok, image_tok = word_tokenizer(root / "text-tok"), image_tokenizer(root / "image-tok")
    rng = np.random.default_rng(7)
    vocab = Vocab(V_TEXT, V_IMAGE)
    docs = [(f"d{i:06d}", np.array(document(rng, len(WORDS))), [f"d{i:06d}/img_00"]) for i in range(401)]
    packed = pack(docs, vocab, SEQ_LEN)
    head = header(vocab, SEQ_LEN, 16, "tokens", None, str(text_tok), str(image_tok), GRID)
    write_interleaved(str(root / "packed"), packed.sequences, head, packed.padding_share, samples_per_shard=50)
    images = [rng.integers(0, V_IMAGE, GRID) for _ in range(300)]
    text_info = modality_info(text_tok, V_TEXT, CAPTION_L, T_PAD)
    pairs = token_set(root / "pairs", [{"rgb_image": im, "caption": caption(im)} for im in images],
                      {"rgb_image": modality_info(image_tok, V_IMAGE, GRID, -1), "caption": text_info})
    text = token_set(root / "text", [{"caption": caption(successive(rng, len(WORDS), 6))} for _ in range(300)],
                     {"caption": text_info})
    return {"root": root, "packed": str(root / "packed"), "pairs": pairs, "text": text, "text_tok": text_tok,
            "image_tok": image_tok, "text_info": text_info}


def mixed(m: dict, *flags: str) -> TrainConfig:
    return tiny(m["packed"], f"pairs={m['pairs']}", f"text={m['text']}", *MIX[1:], *flags)


def test_mixture_rows_are_the_packed_sets_ids(mixture):
    """A pair is BOI <image + v_text> EOI <caption without <eos>/<pad>> EOD, text <ids> EOD, padded with PAD to
    the batch's longest row; interleaved batches pass as they are."""
    from omnimill.shards.mixture import MixtureLoader
    from omnimill.train.causal import MixedBatches, open_packed, rows_of, split_sequences, token_datasets, \
        mixture_sets

    config = mixed(mixture)
    manifest = open_packed(mixture["packed"])
    sets = mixture_sets(manifest, config)
    assert sets == {"pairs": [(mixture["pairs"], ["rgb_image", "caption"])], "text": [(mixture["text"], ["caption"])]}
    loader = MixedBatches(MixtureLoader(4, interleaved=split_sequences(mixture["packed"], "train", 0.2, 0),
                                        preset="mm1", num_workers=0, **{k: token_datasets(v, "train", config)
                                                                        for k, v in sets.items()}),
                          rows_of(manifest, config))
    seen = {}
    for _, batch in zip(range(30), loader):
        seen.setdefault(batch["kind"], batch)
    assert set(seen) == {"interleaved", "pairs", "text"}
    assert seen["interleaved"]["tokens"].shape == (4, SEQ_LEN)
    pair = seen["pairs"]["tokens"]
    assert pair.shape == (4, 1 + GRID + 1 + GRID + 1)  # every pair is 11 tokens: no padding to seq_len
    assert (pair[:, 0] == BOI).all() and (pair[:, 5] == EOI).all() and (pair[:, -1] == EOD).all()
    assert torch.equal(pair[:, 1:5] - V_TEXT, pair[:, 6:10])  # the caption copies the image
    text = seen["text"]["tokens"]
    assert text.shape == (4, 7) and (text[:, -1] == EOD).all()
    assert ((text[:, 1:6] - text[:, :5]) % len(WORDS) == 1).all()  # the words, without <eos> and <pad>
    assert not np.isin(torch.cat([pair.flatten(), text.flatten()]).numpy(), [T_EOS, T_PAD]).any()


def test_mixture_learns_each_source_and_logs_each_kind(mixture, tmp_path):
    """mm1 over 60 steps: each kind's batches show in the log (its training loss per source), the held-out loss
    of every source is finite and below that source's unigram; a document of the packed set continues."""
    from omnimill.train.loop import train

    run = tmp_path / "run"
    result = train(mixed(mixture, "steps=60", "eval_every=60", "lr=3e-3", "min_lr=3e-3"), run, progress=False)
    heldout, baseline = result["heldout"], result["baseline"]
    print("held-out", heldout, "unigram", baseline)
    sources = {"source/interleaved", "source/pairs", "source/text"}
    assert set(heldout) == set(baseline) == {"text", "image", "marker", *sources}
    for source in sources:
        assert np.isfinite(heldout[source]) and heldout[source] < baseline[source], source
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    logged = {k for record in log for k in record.get("per_kind", {})}
    assert sources <= logged
    assert log[-1]["heldout"] == heldout
    facts = continue_via_cli(run, "d000001")
    assert "d000001 (sequence " in facts


def continue_via_cli(run: Path, key: str) -> str:
    result = invoke("generate", run, "--continue", key, "--tokens", 3, "--prefix", 11)
    assert result.exit_code == 0, result.output
    return result.output


def test_mixture_resume_is_identical_to_a_straight_run(mixture, tmp_path):
    from omnimill.train.loop import load_checkpoint, read_commit, train

    settings = mixed(mixture, "steps=10", "eval_every=5", "checkpoint_every=100", "dropout=0.1", "batch_size=4",
                     "log_every=1")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(settings, straight, progress=False)
    train(settings, stopped, progress=False, stop_at=4)
    assert read_commit(stopped)["step"] == 4
    train(settings, stopped, progress=False)
    (a_commit, a), (b_commit, b) = load_checkpoint(straight), load_checkpoint(stopped)
    assert a_commit["step"] == b_commit["step"] == 10
    log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    kinds = [k for record in log for k in record.get("per_kind", {}) if k.startswith("source/")]
    assert len(kinds) == 10 and set(kinds[4:]) == {"source/interleaved", "source/pairs", "source/text"}  # one
    #                                                     kind per batch; every kind after the stop at step 4
    for part in ("model", "state"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), name
    assert a_commit["loader"] == b_commit["loader"]
    assert [h["heldout"] for h in a_commit["history"] if "heldout" in h] == \
        [h["heldout"] for h in b_commit["history"] if "heldout" in h]


def test_mixture_refuses_sets_of_other_tokenizers(mixture, tmp_path):
    """Pairs or text whose text or image tokenizer is not the packed set's, or whose images have another token
    count, or a packed set of placeholders: refused in one line (exit 2) through the CLI, saying what to do."""
    from omnimill.shards.interleave import Vocab, header, pack, write_interleaved

    root = tmp_path
    other_text = word_tokenizer(root / "other-tok", specials=("<eos>", "<pad>", "<cut>"))
    other_info = modality_info(other_text, V_TEXT, CAPTION_L, T_EOS)
    rng = np.random.default_rng(3)
    images = [rng.integers(0, V_IMAGE, GRID) for _ in range(20)]
    text_other = token_set(root / "text-other", [{"caption": caption([1, 2])} for _ in range(20)],
                           {"caption": other_info})
    image_other = token_set(root / "pairs-other", [{"rgb_image": im, "caption": caption(im)} for im in images],
                            {"rgb_image": modality_info(image_tokenizer(root / "img-other", grid=3), V_IMAGE, GRID, -1),
                             "caption": mixture["text_info"]})
    nine = np.zeros(9, int)
    image_nine = token_set(root / "pairs-nine", [{"rgb_image": nine, "caption": caption([1])}] * 20,
                           {"rgb_image": modality_info(mixture["image_tok"], V_IMAGE, 9, -1),
                            "caption": mixture["text_info"]})
    vocab = Vocab(V_TEXT, 0)
    docs = [("d0", np.array([1, 2, vocab.BOI, vocab.IMG_SLOT, vocab.EOI, vocab.EOD]), ["d0/img_00"])]
    slots = pack(docs, vocab, SEQ_LEN)
    write_interleaved(str(root / "slots"), slots.sequences, header(vocab, SEQ_LEN, 16, "placeholders", 1,
                                                                    str(mixture["text_tok"]), None),
                      slots.padding_share, samples_per_shard=1)

    def refused(packed: str, fragment: str, *flags: str) -> None:
        result = invoke("train", packed, "--out", root / "run", *[f"--{f}" for f in MIX], "--steps=1", *flags)
        one_line_error(result, fragment)

    refused(mixture["packed"], "not by the interleaved set's text tokenizer", f"--text={text_other}")
    refused(mixture["packed"], "not by the interleaved set's image tokenizer", f"--pairs={image_other}")
    refused(mixture["packed"], "has 9 tokens per image, the interleaved set's images 4", f"--pairs={image_nine}")
    refused(str(root / "slots"), "holds image placeholders, not image tokens", f"--pairs={mixture['pairs']}")
    refused(mixture["packed"], "has no modality depth", f"--pairs={mixture['pairs']}", "--image_modality=depth")
    refused(mixture["packed"], "data.preset=mm1 weighs pairs, which this run does not give", f"--text={mixture['text']}")
    refused(mixture["packed"], "data.pairs and data.text mix pair and text sets into a causal run",
            f"--text={mixture['text']}", "--objective=4m")
    assert not (root / "run").exists()
    result = invoke("train", mixture["packed"], "--out", root / "run", *[f"--{f}" for f in MIX], "--steps=2",
                    f"--data.pairs={mixture['pairs']}", f"--data.text={mixture['text']}", "--data.preset=mm1")
    assert result.exit_code == 0 and "/6 token kinds and" in result.output, result.output
    result = invoke("train", mixture["packed"], "--out", root / "run", *[f"--{f}" for f in MIX], "--steps=3",
                    f"--data.pairs={mixture['pairs']}", f"--data.text={mixture['text']}",
                    '--data.mix={"interleaved": 1, "pairs": 1, "text": 1}')
    one_line_error(result, "holds a run with other settings (data.mix)")  # a mixture resumes as it began


def test_tokens_per_image_is_the_manifests_and_measured_on_a_set_packed_without_it(mixture, tmp_path):
    """check_source holds pairs to the manifest's image_tokens; a set whose manifest has none (packed before it
    was recorded) has its first image measured."""
    from omnimill.train.causal import mixture_sets, open_packed, tokens_per_image

    recorded = open_packed(mixture["packed"])
    assert recorded["image_tokens"] == GRID and tokens_per_image(recorded) == GRID
    config = mixed(mixture)
    assert set(mixture_sets(recorded, config)) == {"pairs", "text"}
    with pytest.raises(UserError, match="has 4 tokens per image, the interleaved set's images 9"):
        mixture_sets({**recorded, "image_tokens": 9}, config)  # the manifest's word is taken, no shard read
    old = tmp_path / "old"
    shutil.copytree(mixture["packed"], old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["image_tokens"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert tokens_per_image(open_packed(str(old))) == GRID  # measured: BOI, 4 image ids, EOI
    imageless = {**recorded, "image_tokens": None, "shards": []}
    assert tokens_per_image(imageless) is None  # no count recorded and no image to measure


def test_a_set_split_by_document_at_pack_time(mixture, tmp_path):
    """A set packed with a "holdout" record (pack_documents: documents split by DOC_KEY before packing) is read
    by its recorded split, not data.holdout: the held-out loader holds exactly the held-out documents' sequences,
    a mixture trains on it, and a continued document says the split its sequences were packed in."""
    from omnimill.shards.interleave import Vocab, header, pack_documents, text_encoder
    from omnimill.store.base import held_out
    from tokenizers import Tokenizer

    from omnimill.train.causal import PackedLoader, continue_document, reading_ranks, split_sequences
    from omnimill.train.loop import train

    rng = np.random.default_rng(11)
    encode = text_encoder(Tokenizer.from_file(str(mixture["text_tok"] / "tokenizer.json")))
    images, documents = {}, []
    for i in range(120):
        key = f"d{i:06d}"
        images[f"{key}/img_00"] = rng.integers(0, V_IMAGE, GRID)
        words = " ".join(WORDS[j] for j in successive(rng, len(WORDS), 5))
        documents.append((key, [{"text": words}, {"image": f"{key}/img_00", "alt": None, "meta": {}},
                                {"text": " ".join(WORDS[j] for j in images[f"{key}/img_00"])}]))
    head = header(Vocab(V_TEXT, V_IMAGE), SEQ_LEN, 16, "tokens", None, str(mixture["text_tok"]),
                  str(mixture["image_tok"]))
    out = str(tmp_path / "by-document")
    manifest = pack_documents(documents, out, encode, head, images, samples_per_shard=10, holdout=0.25, seed=3)
    assert manifest["holdout"]["by"] == "document"
    truth = [d for d, _ in documents if held_out([d], 0.25, 3)[0]]
    split = {name: {d for s in split_sequences(out, name, 0.9, 0, epochs=1, shuffle=False) for d in s["docs"]}
             for name in ("train", "heldout")}
    assert split["heldout"] == set(truth) and split["train"] == {d for d, _ in documents} - set(truth)
    assert 10 < len(truth) < 60
    keys = [k for b in PackedLoader(out, "heldout", 0.9, 0, 8, epochs=1, shuffle=False) for k in b["keys"]]
    assert keys == [s["key"] for s in split_sequences(out, "heldout", 0.9, 0, epochs=1, shuffle=False)]

    # a held-out split by document is read whole by every rank; a rank of two could not read one held-out shard
    small = str(tmp_path / "one-heldout-shard")
    one = pack_documents(documents, small, encode, head, images, samples_per_shard=100, holdout=0.25, seed=3)
    assert sum(r["split"] == "heldout" for r in one["shards"]) == 1
    assert reading_ranks(one, "heldout", 1, 2) == (0, 1) and reading_ranks(one, "train", 1, 2) == (1, 2)
    assert reading_ranks({}, "heldout", 1, 2) == (1, 2)  # an older set: split by key over every shard
    with pytest.raises(UserError, match="fewer than world_size 2"):
        split_sequences(small, "heldout", 0.9, 0, rank=1, world=2)
    assert len(list(split_sequences(small, "heldout", 0.9, 0, *reading_ranks(one, "heldout", 1, 2),
                                    epochs=1))) == one["holdout"]["n"]["heldout"]
    none = str(tmp_path / "nothing-held-out")
    pack_documents(documents, none, encode, head, images, samples_per_shard=10, holdout=0.0, seed=3)
    with pytest.raises(UserError, match="holds no held-out documents"):
        train(tiny(none, "steps=1"), tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()  # refused before anything is written

    run = tmp_path / "run"
    result = train(tiny(out, f"pairs={mixture['pairs']}", f"text={mixture['text']}", *MIX[1:], "steps=3",
                        "holdout=0.9"), run, progress=False)
    assert np.isfinite(result["heldout"]["source/interleaved"])
    for doc in (truth[0], next(d for d, _ in documents if d not in truth)):
        facts = continue_document(run, doc, new_tokens=2, prefix=3)
        assert facts["held_out"] == (doc in truth)
