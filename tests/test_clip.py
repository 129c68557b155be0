"""omnimill/labelers/clip.py: tiny real CLIP and SigLIP checkpoints (random weights, offline tokenizers)."""

from __future__ import annotations

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
from test_caption import tiny_bert_tokenizer

CLIP = "omnimill.labelers.clip:CLIP"
S = 48  # view size
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def tiny_clip_tokenizer():
    """A real CLIPTokenizer (byte-level BPE) over the 256 byte symbols and a few merges, built offline."""
    from transformers import CLIPTokenizer

    # the printable stand-ins byte-level BPE uses for the 256 byte values (GPT-2 / CLIP convention)
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    merges = [("a", "t</w>"), ("c", "at</w>"), ("d", "o"), ("do", "g</w>")]
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """CLIPModel: ViT with 32 px input, 8 px patches (4 x 4 grid), projection 24; saved with its tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    tokenizer = tiny_clip_tokenizer()
    v = len(tokenizer)
    config = CLIPConfig(
        text_config=dict(vocab_size=v, max_position_embeddings=16, bos_token_id=v - 2, eos_token_id=v - 1,
                         pad_token_id=v - 1, **SMALL),
        vision_config=dict(image_size=32, patch_size=8, **SMALL), projection_dim=24)
    path = tmp_path_factory.mktemp("ckpt") / "tiny-clip"
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory):
    from transformers import SiglipConfig, SiglipModel

    path = tmp_path_factory.mktemp("ckpt") / "tiny-siglip"
    tokenizer = tiny_bert_tokenizer(path)
    config = SiglipConfig(text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=12, **SMALL),
                          vision_config=dict(image_size=32, patch_size=8, **SMALL))
    torch.manual_seed(0)
    SiglipModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load(path, view_size=S):
    teacher = build(TeacherSpec(CLIP, str(path)), view_size)
    teacher.load("cpu", "float32")
    return teacher


def batch(captions, view_size=S) -> Batch:
    decoded = [decode_view(jpeg_bytes(i), view_size) for i in range(len(captions))]
    for d, c in zip(decoded, captions):
        d.info.caption = c
    keys = [f"k{i}" for i in range(len(captions))]
    return Batch(np.stack([d.view for d in decoded]), [d.info for d in decoded], keys)


def reference_pixels(views, size, mean, std):
    """What the CLIP processor would feed: resize the (square) view, scale to 0..1, normalise."""
    x = torch.from_numpy(views).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_clip_fields_and_values_match_the_model_forward(tiny_clip):
    from transformers import AutoTokenizer, CLIPModel

    teacher = load(tiny_clip)
    b = batch(["a cat", "", "a dog on the grass"])
    out = teacher(b)
    assert {f.name: (f.shape, f.dtype) for f in teacher.fields()} == {
        "embedding": ((24,), "float32"), "patches": ((4, 4, 32), "float16"),
        "text_embedding": ((24,), "float32"), "has_text": ((), "bool")}
    assert [f.kind for f in teacher.fields()] == ["embedding", "embedding_grid", "embedding", "scalar"]
    for f in teacher.fields():
        assert out[f.name].shape == (3, *f.shape) and out[f.name].dtype == np.dtype(f.dtype)

    # the same numbers from CLIPModel's own forward (which L2-normalises both towers' embeddings)
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    tokens = AutoTokenizer.from_pretrained(tiny_clip)(["a cat", "a dog on the grass"], padding=True,
                                                      return_tensors="pt")
    with torch.inference_mode():
        ref = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                    pixel_values=reference_pixels(b.views, 32, CLIP_MEAN, CLIP_STD), output_hidden_states=True)
    np.testing.assert_allclose(out["embedding"], ref.image_embeds.numpy(), atol=1e-5)
    patches = ref.vision_model_output.last_hidden_state[:, 1:].reshape(3, 4, 4, 32).numpy()
    np.testing.assert_allclose(out["patches"], patches, atol=2e-3, rtol=2e-3)  # float16
    assert out["has_text"].tolist() == [True, False, True]
    np.testing.assert_allclose(out["text_embedding"][[0, 2]], ref.text_embeds.numpy(), atol=1e-5)
    assert not out["text_embedding"][1].any()
    np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=1), 1, atol=1e-5)


def test_clip_embed_text_is_in_the_image_space_and_batch_independent(tiny_clip):
    teacher = load(tiny_clip)
    texts = ["a cat", "a dog", "a long caption " * 20]  # the last one is longer than the 16-token context
    together = teacher.embed_text(texts)
    alone = np.concatenate([teacher.embed_text([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert together.shape == (3, 24) and together.dtype == np.float32
    assert teacher.embed_text([]).shape == (0, 24)

    b = batch(["", "", ""])
    whole = teacher(b)
    single = teacher(b.subset([1]))
    np.testing.assert_allclose(whole["embedding"][1:2], single["embedding"], atol=1e-5)
    assert not whole["has_text"].any()


def test_clip_provenance_names_the_checkpoint(tiny_clip):
    info = load(tiny_clip).provenance()
    assert info["teacher"] == "clip" and len(info["checkpoint_sha256"]) == 64
    assert info["config"]["model_type"] == "clip" and info["config"]["image_size"] == 32


def test_siglip_matches_its_forward(tiny_siglip):
    from transformers import SiglipModel

    teacher = load(tiny_siglip)
    b = batch(["a red ball", ""])
    out = teacher(b)
    assert out["embedding"].shape == (2, 32) and out["patches"].shape == (2, 4, 4, 32)
    model = SiglipModel.from_pretrained(tiny_siglip).eval()
    ids = teacher.tokenizer(["a red ball"], padding="max_length", max_length=12, return_tensors="pt").input_ids
    with torch.inference_mode():
        ref = model(input_ids=ids, pixel_values=reference_pixels(b.views, 32, (0.5,) * 3, (0.5,) * 3))
    np.testing.assert_allclose(out["embedding"], ref.image_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(out["text_embedding"][:1], ref.text_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(out["patches"], ref.vision_model_output.last_hidden_state.reshape(2, 4, 4, 32),
                               atol=2e-3, rtol=2e-3)


def test_clip_refuses_wrong_checkpoints(tiny_clip, tiny_dinov2, tmp_path):
    with pytest.raises(UserError, match="not a loadable CLIP or SigLIP checkpoint.*model_type is 'dinov2'"):
        build(TeacherSpec(CLIP, str(tiny_dinov2)), S)
    with pytest.raises(UserError, match="does not exist.*--teacher clip="):
        build(TeacherSpec(CLIP, str(tmp_path / "missing")), S)
    weights_only = tmp_path / "weights-only"
    shutil.copytree(tiny_clip, weights_only, ignore=shutil.ignore_patterns("tokenizer*"))
    with pytest.raises(UserError, match="no tokenizer"):
        build(TeacherSpec(CLIP, str(weights_only)), S)


def test_clip_end_to_end_through_the_engine(corpus, tmp_path, tiny_clip):
    from omnimill.engine.label import EXIT_OK, label

    store = tmp_path / "labels.zarr"
    result = label(str(corpus), str(store), [f"{CLIP}={tiny_clip}"], workers=1, unit_size=8, view_size=64,
                   progress=False)
    assert result.exit_code == EXIT_OK
    group = zarr.open_group(str(store), mode="r")
    assert group["clip/ok"][:].all()
    assert group["clip/embedding"].shape == (20, 24) and group["clip/embedding"].dtype == np.float32
    assert group["clip/patches"].shape == (20, 4, 4, 32) and group["clip/patches"].dtype == np.float16
    keys = list(group["keys"][:])
    has_text = group["clip/has_text"][:]
    assert {k for k, h in zip(keys, has_text) if h} == {"a/img0001", "b/img0013"}

    # what the store holds is what the teacher gives for the decoded view and the corpus caption
    teacher = load(tiny_clip, 64)
    rows = [keys.index("a/img0001"), keys.index("a/img0002")]
    decoded = [decode_view(open(str(group["source"][i]), "rb").read(), 64) for i in rows]
    decoded[0].info.caption = "a red ball on grass"
    direct = teacher(Batch(np.stack([d.view for d in decoded]), [d.info for d in decoded], ["x", "y"]))
    for name in ("embedding", "text_embedding"):
        np.testing.assert_allclose(group[f"clip/{name}"][rows], direct[name], atol=1e-5)
    np.testing.assert_allclose(group["clip/patches"][rows].astype(np.float32), direct["patches"].astype(np.float32),
                               atol=1e-2)
    assert len(group["clip"].attrs["checkpoint_sha256"]) == 64
