"""omnimill/labelers/t5_embed.py: a tiny real T5 (random weights, saved as google/t5-v1_1-* are: a whole
T5ForConditionalGeneration) with a real T5 tokenizer whose Unigram vocabulary is trained here (with
`tokenizers`; and a SentencePiece model alone, as the hub's T5 checkpoints ship it), labelled through the
registry and through the Dask engine, checked against a direct T5EncoderModel call."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import jpeg_bytes
from omnimill.corpus.image import decode_view
from omnimill.errors import UserError
from omnimill.labelers.base import Batch, TeacherSpec
from omnimill.labelers.registry import build
from omnimill.labelers.t5_embed import MAX_TOKENS

S = 48  # view size
D = 32  # the tiny encoder's d_model
SPECIAL = ["<pad>", "</s>", "<unk>"]  # T5's ids 0, 1, 2
TEXT = ("a red ball on grass . two cats sitting next to a small white table . a man and a woman standing in "
        "the street with a black car . a photo of a green tree under a blue sky").split(" . ")


def tiny_t5_tokenizer():
    """A real T5Tokenizer over a Unigram vocabulary trained on TEXT (what SentencePiece would learn, no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    unigram.train_from_iterator(TEXT * 20, trainers.UnigramTrainer(vocab_size=120, special_tokens=SPECIAL,
                                                                   unk_token="<unk>", show_progress=False))
    vocab = [tuple(piece) for piece in json.loads(unigram.to_str())["model"]["vocab"]]
    assert [piece for piece, _ in vocab[:3]] == SPECIAL
    return T5Tokenizer(vocab=vocab, extra_ids=4)


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    from transformers import T5Config, T5ForConditionalGeneration

    path = tmp_path_factory.mktemp("ckpt") / "tiny-t5"
    tokenizer = tiny_t5_tokenizer()
    config = T5Config(vocab_size=len(tokenizer), d_model=D, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def teacher(tiny_t5):
    t = build(TeacherSpec("t5_embed", str(tiny_t5)), S)
    t.load("cpu", "float32")
    return t


def batch(captions) -> Batch:
    decoded = [decode_view(jpeg_bytes(i), S) for i in range(len(captions))]
    for d, c in zip(decoded, captions):
        d.info.caption = c
    return Batch(np.stack([d.view for d in decoded]), [d.info for d in decoded], [f"k{i}" for i in range(len(captions))])


def direct(path, caption: str) -> np.ndarray:
    """T5EncoderModel on one caption, unpadded: what each stored row must equal."""
    from transformers import AutoTokenizer, T5EncoderModel

    ids = AutoTokenizer.from_pretrained(path)(caption, truncation=True, max_length=MAX_TOKENS,
                                              return_tensors="pt")["input_ids"]
    model = T5EncoderModel.from_pretrained(path).eval()
    with torch.inference_mode():
        return model(input_ids=ids).last_hidden_state[0].numpy()


def test_fields_and_kinds(teacher):
    assert [(f.name, f.shape, f.dtype, f.kind) for f in teacher.fields()] == [
        ("embeddings", (MAX_TOKENS, D), "float32", "embedding"), ("mask", (MAX_TOKENS,), "bool", "scalar"),
        ("count", (), "int32", "count")]
    assert teacher.config()["dim"] == D and teacher.config()["max_tokens"] == MAX_TOKENS == 77
    assert teacher.provenance()["config"]["model_type"] == "t5"


def test_per_token_embeddings_equal_the_encoders_own(teacher, tiny_t5):
    long = " ".join(TEXT * 4)  # more than 77 tokens: truncated, </s> kept last
    captions = ["a red ball on grass", "", "two cats sitting next to a small white table", long]
    out = teacher(batch(captions))
    embeddings, mask, count = out["embeddings"], out["mask"], out["count"]
    assert embeddings.shape == (4, MAX_TOKENS, D) and mask.shape == (4, MAX_TOKENS) and count.dtype == np.int32
    np.testing.assert_array_equal(count, mask.sum(1))
    assert count[1] == 0 and not embeddings[1].any()  # no caption: nothing embedded
    assert count[3] == MAX_TOKENS
    for i in (0, 2, 3):
        n = count[i]
        assert mask[i, :n].all() and not mask[i, n:].any()  # real tokens first, then padding
        assert not embeddings[i, n:].any() and (np.abs(embeddings[i, :n]).sum(1) > 0).all()
        expected = direct(tiny_t5, captions[i])
        assert expected.shape == (n, D)  # the tokenizer's own count, </s> included
        np.testing.assert_allclose(embeddings[i, :n], expected, rtol=1e-4, atol=1e-5)  # padding changes nothing


@pytest.fixture(scope="module")
def spiece_t5(tmp_path_factory, tiny_t5):
    """The same model with only a SentencePiece model for its tokenizer, as google/t5-v1_1-* ship it."""
    import io
    import shutil

    import sentencepiece

    path = tmp_path_factory.mktemp("ckpt") / "spiece-t5"
    path.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_t5 / name, path / name)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(TEXT * 20), model_writer=model, vocab_size=40,
                                             model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                             minloglevel=2)
    (path / "spiece.model").write_bytes(model.getvalue())
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 4}))
    return path


def test_a_sentencepiece_only_checkpoint_tokenizes_as_sentencepiece(spiece_t5):
    import sentencepiece

    teacher = build(TeacherSpec("t5_embed", str(spiece_t5)), S)
    teacher.load("cpu", "float32")
    caption = "a red ball on grass"
    out = teacher(batch([caption]))
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(spiece_t5 / "spiece.model")).encode(caption)
    assert out["count"][0] == len(pieces) + 1  # SentencePiece's own pieces, then </s>
    np.testing.assert_allclose(out["embeddings"][0, :len(pieces) + 1], direct(spiece_t5, caption), rtol=1e-4, atol=1e-5)


def test_refuses_other_models_and_checkpoints_without_tokenizer(tiny_t5, tiny_dinov2, tmp_path):
    import shutil

    with pytest.raises(UserError, match="model_type is 'dinov2', expected t5"):
        build(TeacherSpec("t5_embed", str(tiny_dinov2)), S)
    bare = tmp_path / "weights-only"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_t5 / name, bare / name)
    with pytest.raises(UserError, match="no tokenizer files"):
        build(TeacherSpec("t5_embed", str(bare)), S)


def test_t5_embed_end_to_end_through_the_engine(corpus, tmp_path, tiny_t5):
    from omnimill.engine.job import EXIT_OK
    from omnimill.engine.label import label
    from omnimill.store.labels import LabelStore

    store = tmp_path / "labels.zarr"
    result = label(str(corpus), str(store), [f"t5_embed={tiny_t5}"], workers=1, unit_size=8, view_size=64,
                   progress=False)
    assert result.exit_code == EXIT_OK
    labels = LabelStore.open(str(store))
    assert labels.ok("t5_embed").all()
    out = labels.outputs("t5_embed")
    assert out["embeddings"].shape == (20, MAX_TOKENS, D) and out["mask"].shape == (20, MAX_TOKENS)
    captions = labels.read("caption")
    for i, caption in enumerate(captions):
        if not caption:
            assert out["count"][i] == 0 and not out["mask"][i].any() and not out["embeddings"][i].any()
            continue
        expected = direct(tiny_t5, caption)
        assert out["count"][i] == len(expected) == out["mask"][i].sum()
        np.testing.assert_allclose(out["embeddings"][i, :len(expected)], expected, rtol=1e-4, atol=1e-5)
    assert sorted(c for c in captions if c) == ["a red ball on grass", "two cats"]
    assert labels.provenance("t5_embed")["fields"]["embeddings"]["kind"] == "embedding"
