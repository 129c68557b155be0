"""omnimill/labelers/imagebind.py: without Meta's ImageBind code the teacher is refused up front, saying how
to install it.

The real path (imagebind_huge on the released checkpoint) is not tested here: the official code is not on
PyPI, its unofficial packagings pull in torchaudio, pytorchvideo and decord, and its only architecture is
the 1.2-billion-parameter imagebind_huge, which no test can build cheaply.
"""

from __future__ import annotations

import importlib.util

import pytest

from omnimill.errors import UserError
from omnimill.labelers.base import TeacherSpec
from omnimill.labelers.registry import build

IMAGEBIND = "omnimill.labelers.imagebind:ImageBind"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("imagebind") is not None,
                                reason="ImageBind's code is installed here; these tests check the message without it")


def test_imagebind_without_its_package_says_what_to_install(tmp_path):
    checkpoint = tmp_path / "imagebind_huge.pth"
    checkpoint.write_bytes(b"not needed: the package check comes first")
    with pytest.raises(UserError) as info:
        build(TeacherSpec(IMAGEBIND, str(checkpoint)), 64)
    message = str(info.value)
    assert "teacher imagebind needs Meta's ImageBind code" in message
    assert "No module named 'imagebind'" in message
    assert "pip install git+https://github.com/facebookresearch/ImageBind" in message


def test_label_refuses_imagebind_before_writing_anything(corpus, tmp_path):
    from omnimill.engine.label import label

    store = tmp_path / "labels.zarr"
    with pytest.raises(UserError, match="pip install git\\+https://github.com/facebookresearch/ImageBind"):
        label(str(corpus), str(store), [f"{IMAGEBIND}={tmp_path / 'imagebind_huge.pth'}"], workers=1,
              unit_size=8, view_size=64, progress=False)
    assert not store.exists()
