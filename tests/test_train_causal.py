"""The causal objective (`--objective causal`) on packed interleaved shards: the causal mask, PAD and image
targets in the loss, a task it must learn (the text after an image copies the image's tokens) with held-out
text loss well below the unigram baseline, resume identical to a straight run, and continuing a document.

The shards are synthetic documents packed and written by shards/interleave.py (omnimill.interleaved/1)."""

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


def document(rng: np.random.Generator) -> list[int]:
    """5 random text ids, an image of 4 random image ids, then 4 text ids that copy the image (image id
    V_TEXT + j -> text id j), EOD: 16 tokens, of which the 4 copies are known only from the image."""
    image = rng.integers(0, V_IMAGE, GRID)
    return [*rng.integers(0, V_TEXT, 5), BOI, *(V_TEXT + image), EOI, *image, EOD]


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
