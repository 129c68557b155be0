"""omnimill/labelers/imagebind.py: the real path on Meta's ImageBind code where it imports (`make imagebind`), and
without it, the teacher refused up front, saying how to install it.

The real path builds ImageBind's own ImageBindModel at a tiny size (random weights, 1.8 M parameters), saves its
state dict as imagebind_huge.pth is saved, and labels through the teacher and the engine. ImageBind's code is
not in `make setup`: on PyPI only imagebind-unofficial 0.1.1 ships it, and as pip resolves it (torch 2.14.1,
torchvision 0.29.1) `import imagebind` fails with "No module named 'pkg_resources'" (setuptools 84) and then
"No module named 'torchvision.transforms.functional_tensor'" (its pytorchvideo 0.1.5); imagebind-packaged 0.1.2
pins torch==1.13.0, and imagebind-package 0.1.1 does not build (its setup.py reads a requirements.txt its sdist
lacks). `make imagebind` installs a combination that imports (see the Makefile).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from omnimill.errors import UserError
from omnimill.labelers.base import TeacherSpec
from omnimill.labelers.registry import build

IMAGEBIND = "omnimill.labelers.imagebind:ImageBind"

INSTALLED = importlib.util.find_spec("imagebind") is not None
without_imagebind = pytest.mark.skipif(INSTALLED, reason="ImageBind's code is installed here; these tests check "
                                                         "the message without it")
S = 64
TINY = dict(out_embed_dim=16, vision_embed_dim=32, vision_num_blocks=2, text_embed_dim=32, text_num_blocks=1,
            audio_embed_dim=24, audio_num_blocks=1, depth_embed_dim=16, depth_num_blocks=1, thermal_embed_dim=24,
            thermal_num_blocks=1, imu_embed_dim=16, imu_num_blocks=1)  # widths divisible by imagebind_huge's heads


def importable() -> bool:
    from omnimill.labelers.imagebind import require_imagebind

    try:
        require_imagebind()
        return True
    except UserError:
        return False


with_imagebind = pytest.mark.skipif(not (INSTALLED and importable()),
                                    reason="ImageBind's code does not import here (make imagebind installs it)")


@without_imagebind
def test_imagebind_without_its_package_says_what_to_install(tmp_path):
    checkpoint = tmp_path / "imagebind_huge.pth"
    checkpoint.write_bytes(b"not needed: the package check comes first")
    with pytest.raises(UserError) as info:
        build(TeacherSpec(IMAGEBIND, str(checkpoint)), 64)
    message = str(info.value)
    assert "teacher imagebind needs Meta's ImageBind code" in message
    assert "No module named 'imagebind'" in message
    assert "pip install git+https://github.com/facebookresearch/ImageBind" in message


@without_imagebind
def test_label_refuses_imagebind_before_writing_anything(corpus, tmp_path):
    from omnimill.engine.label import label

    store = tmp_path / "labels.zarr"
    with pytest.raises(UserError, match="pip install git\\+https://github.com/facebookresearch/ImageBind"):
        label(str(corpus), str(store), [f"{IMAGEBIND}={tmp_path / 'imagebind_huge.pth'}"], workers=1,
              unit_size=8, view_size=64, progress=False)
    assert not store.exists()


def test_known_import_failures_say_what_fixes_them():
    from omnimill.labelers.imagebind import HINTS

    assert "setuptools<81" in HINTS["pkg_resources"]
    assert "jj-pytorchvideo" in HINTS["torchvision.transforms.functional_tensor"]


# ---------------------------------------------------------------- the real path (make imagebind)


@pytest.fixture(scope="module")
def tiny_imagebind(tmp_path_factory):
    """ImageBind's own ImageBindModel, tiny, random weights, saved as imagebind_huge.pth is: a plain state dict."""
    import torch
    from imagebind.models.imagebind_model import ImageBindModel

    from omnimill.labelers.imagebind import HEADS

    torch.manual_seed(0)
    model = ImageBindModel(**TINY, **{f"{m}_num_heads": h for m, h in HEADS.items()})
    path = tmp_path_factory.mktemp("ckpt") / "imagebind_tiny.pth"
    torch.save(model.state_dict(), path)
    return path


def views_and_infos(captions):
    from conftest import jpeg_bytes
    from omnimill.corpus.image import decode_view

    decoded = [decode_view(jpeg_bytes(i), S) for i in range(len(captions))]
    for d, c in zip(decoded, captions):
        d.info.caption = c
    return np.stack([d.view for d in decoded]), [d.info for d in decoded]


@with_imagebind
def test_architecture_is_read_from_the_weights(tiny_imagebind, tmp_path):
    import torch

    from omnimill.labelers.imagebind import DROP_PATHS, HEADS

    teacher = build(TeacherSpec(IMAGEBIND, str(tiny_imagebind)), S)
    assert teacher.architecture == {**TINY, **DROP_PATHS, **{f"{m}_num_heads": h for m, h in HEADS.items()}}
    assert [(f.name, f.shape) for f in teacher.fields()] == [("embedding", (16,)), ("text_embedding", (16,)),
                                                             ("has_text", ())]
    assert teacher.config()["embed_dim"] == 16 and teacher.provenance()["architecture"] == teacher.architecture
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2, 2)}, other)
    with pytest.raises(UserError, match="is not an ImageBind checkpoint"):
        build(TeacherSpec(IMAGEBIND, str(other)), S)


@with_imagebind
def test_embeddings_are_imagebinds_own(tiny_imagebind):
    import torch
    import torch.nn.functional as F
    from imagebind import data
    from imagebind.models.imagebind_model import ImageBindModel

    from omnimill.labelers.base import Batch
    from omnimill.labelers.imagebind import HEADS, MEAN, STD

    teacher = build(TeacherSpec(IMAGEBIND, str(tiny_imagebind)), S)
    teacher.load("cpu", "float32")
    captions = ["a red ball on grass", "", "two cats"]
    views, infos = views_and_infos(captions)
    out = teacher(Batch(views, infos, ["a", "b", "c"]))

    model = ImageBindModel(**TINY, **{f"{m}_num_heads": h for m, h in HEADS.items()})
    model.load_state_dict(torch.load(tiny_imagebind, weights_only=True))
    model.eval()
    x = torch.from_numpy(views).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bicubic", antialias=True, align_corners=False)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        vision = F.normalize(model({"vision": x})["vision"], dim=-1).numpy()
        text = F.normalize(model({"text": data.load_and_transform_text(["a red ball on grass", "two cats"], "cpu")})
                           ["text"], dim=-1).numpy()
    np.testing.assert_allclose(out["embedding"], vision, atol=1e-5)
    assert out["has_text"].tolist() == [True, False, True]
    np.testing.assert_allclose(out["text_embedding"][[0, 2]], text, atol=1e-5)
    assert not out["text_embedding"][1].any()
    np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=1), 1, atol=1e-5)


@with_imagebind
def test_imagebind_through_the_engine(corpus, tiny_imagebind, tmp_path):
    from omnimill.engine.job import EXIT_OK
    from omnimill.engine.label import label
    from omnimill.store.labels import LabelStore

    store = str(tmp_path / "labels.zarr")
    result = label(str(corpus), store, [f"imagebind={tiny_imagebind}"], workers=1, unit_size=8, view_size=S,
                   progress=False)
    assert result.exit_code == EXIT_OK
    labels = LabelStore.open(store)
    assert labels.ok("imagebind").all()
    out = labels.outputs("imagebind")
    assert out["embedding"].shape == (20, 16) and out["text_embedding"].shape == (20, 16)
    has_caption = np.array([bool(c) for c in labels.read("caption")])
    np.testing.assert_array_equal(out["has_text"], has_caption)
    assert has_caption.sum() == 2 and not out["text_embedding"][~has_caption].any()
    np.testing.assert_allclose(np.linalg.norm(out["text_embedding"][has_caption], axis=1), 1, atol=1e-5)
