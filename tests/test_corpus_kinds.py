"""omnimill/corpus/kinds.py: the registry of sample kinds, the image kind, and a kind registered here
(a "swatch": a text file naming one colour) going through listing, the label store and the worker."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from conftest import photo
from omnimill.corpus.image import DEFAULT_MAX_PIXELS, ImageInfo, centre_square
from omnimill.corpus.kinds import DEFAULT_KIND, kind_of, known, register, unregister
from omnimill.corpus.listing import ByteReader, CorpusIndex, index_corpus
from omnimill.corpus.sample import DecodeSettings, SampleArray, SampleKind
from omnimill.engine.worker import UnitTask, run_unit
from omnimill.errors import SampleError, UserError
from omnimill.labelers.base import Batch, TeacherSpec
from omnimill.labelers.registry import build
from omnimill.store.labels import LabelStore

SETTINGS = DecodeSettings(view_size=32, max_pixels=DEFAULT_MAX_PIXELS)


# ---------------------------------------------------------------- the registry


def test_unknown_kind_names_the_known_ones(tmp_path):
    assert "image" in known() and DEFAULT_KIND == "image"
    with pytest.raises(UserError, match=r"unknown sample kind 'video'; known kinds: .*image"):
        kind_of("video")
    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="unknown sample kind 'video'"):
        index_corpus(str(tmp_path), sample_kind="video")


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="'image' is already registered"):
        register(type(kind_of("image"))())


# ---------------------------------------------------------------- the image kind


def test_image_kind_extensions_and_keys():
    image = kind_of("image")
    assert image.name == "image"
    assert {"jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"} == set(image.extensions)
    assert image.key("a/b.c/img.001") == "a/b_c/img_001"  # WebDataset splits keys at dots
    assert image.key("/x/") == "x" and image.key("") == "_"
    assert [(a.name, a.shape, a.dtype) for a in image.sample_arrays] == [("crop_box", (4,), "int32")]


def test_image_kind_lists_fetches_and_decodes_real_files(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(photo(1, 90, 60)).save(folder / "wide.png")
    Image.fromarray(photo(2, 40, 70)).save(folder / "sub" / "tall.v2.jpg")
    (folder / "notes.md").write_text("not a sample")
    (folder / "wide.txt").write_text("a wide picture")
    index = index_corpus(str(folder))
    assert index.sample_kind == "image" and index.kind == "folder"
    assert index.keys == ["sub/tall_v2", "wide"]

    image = kind_of("image")
    decoded = []
    with ByteReader() as reader:
        for i in range(len(index)):
            sample = {"source": index.sources[i], "offset": index.offsets[i], "size": index.sizes[i],
                      "caption": index.captions[i]}
            data = image.fetch(reader, sample)
            assert data == open(index.sources[i], "rb").read()
            decoded.append(image.decode(data, sample, SETTINGS))
    tall, wide = decoded
    assert wide.view.shape == (32, 32, 3) and wide.view.dtype == np.uint8
    assert wide.info.caption == "a wide picture" and tall.info.caption == ""
    assert image.sample_values(wide) == {"crop_box": centre_square(90, 60)}
    assert image.sample_values(tall) == {"crop_box": centre_square(40, 70)}

    batch = Batch(keys=index.keys, **image.batch_fields(decoded))
    assert batch.views.shape == (2, 32, 32, 3) and [i.width for i in batch.infos] == [40, 90]
    assert len(batch.subset([1])) == 1

    with pytest.raises(SampleError) as bad:
        image.decode(b"no picture here", {"caption": ""}, SETTINGS)
    assert bad.value.stage == "decode"


# ---------------------------------------------------------------- a kind of our own

SIDE = 4  # a swatch's view: SIDE x SIDE pixels of its colour


class SwatchKind(SampleKind):
    """A text file "r g b": teachers see a square of that colour; the store keeps the colour per sample."""

    name = "swatch_test"
    noun = "swatch"
    plural = "swatches"
    extensions = frozenset({"swatch", "sw"})
    sample_arrays = (SampleArray("colour", (3,), "uint8", "the colour the file names"),)

    def decode(self, data, sample, settings):
        try:
            colour = tuple(int(v) for v in data.decode().split())
            assert len(colour) == 3
        except (ValueError, AssertionError):
            raise SampleError("decode", "not three numbers") from None
        view = np.broadcast_to(np.array(colour, np.uint8), (settings.view_size, settings.view_size, 3)).copy()
        side = settings.view_size
        info = ImageInfo(side, side, "swatch", "swatch", len(data), False, (0, 0, side, side), str(sample["caption"]))
        return view, info

    def batch_fields(self, decoded):
        return {"views": np.stack([view for view, _ in decoded]), "infos": [info for _, info in decoded]}

    def sample_values(self, decoded):
        return {"colour": decoded[0][0, 0]}


@pytest.fixture
def swatch():
    kind = register(SwatchKind())
    try:
        yield kind
    finally:
        unregister(kind.name)


def swatch_folder(root):
    (root / "deep").mkdir(parents=True)
    (root / "red.swatch").write_text("255 0 0")
    (root / "deep" / "teal.sw").write_text("0 128 128")
    (root / "deep" / "teal.txt").write_text("teal")
    (root / "broken.swatch").write_text("purple")
    Image.fromarray(photo(3)).save(root / "photo.jpg")  # an image: not a swatch
    return root


def test_a_registered_kind_is_picked_up_by_listing(swatch, tmp_path):
    folder = swatch_folder(tmp_path / "swatches")
    index = index_corpus(str(folder), sample_kind=swatch.name)
    assert index.sample_kind == swatch.name
    assert index.keys == ["broken", "deep/teal", "red"]
    assert index.captions == ["", "teal", ""]
    assert index_corpus(str(folder)).keys == ["photo"]  # the image kind still lists only the image

    tar = tmp_path / "swatches.tar"
    with tarfile.open(tar, "w") as t:
        for name, data in [("x/one.swatch", b"1 2 3"), ("x/one.txt", b"first"), ("x/two.jpg", b"jpeg")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    index = index_corpus(str(tar), sample_kind=swatch.name)
    assert index.keys == ["x/one"] and index.captions == ["first"]
    with ByteReader() as reader:
        assert reader.read(index.sources[0], index.offsets[0], index.sizes[0]) == b"1 2 3"

    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "a.jpg").write_bytes(b"an image, not a swatch")
    with pytest.raises(UserError, match=r"no swatches found in .*none .*expected swatch files \(sw, swatch\)"):
        index_corpus(str(tmp_path / "none"), sample_kind=swatch.name)


def test_a_registered_kind_goes_through_the_store_and_the_worker(swatch, tmp_path):
    index = index_corpus(str(swatch_folder(tmp_path / "swatches")), sample_kind=swatch.name)
    uri = str(tmp_path / "labels.zarr")
    store = LabelStore.create(uri, index, SIDE, 2)
    assert store.sample_kind == swatch.name and store.attrs()["sample_kind"] == swatch.name
    assert store.kind is swatch
    assert store.array_info("colour") == ((3, 3), np.dtype("uint8"))
    assert store.reader("colour").chunks == (2, 3)
    assert not store.has("crop_box") and store.TOP[-1] == "colour"

    rgb = TeacherSpec("rgb")
    teacher = build(rgb, SIDE)
    store.prepare_teacher("rgb", teacher.fields(), teacher.provenance())
    for u in range(store.n_units):
        unit = store.unit(u)
        result = run_unit(UnitTask(uri, u, unit.start, unit.stop, [rgb], SIDE, batch_size=2, decode_threads=1,
                                   sync_commit=True))
        assert "fatal" not in result

    store = LabelStore.open(uri)
    assert list(store.ok("rgb")) == [False, True, True]  # broken, deep/teal, red
    np.testing.assert_array_equal(store.sample_values()["colour"], [[0, 0, 0], [0, 128, 128], [255, 0, 0]])
    np.testing.assert_array_equal(store.outputs("rgb", 2)["image"], np.full((SIDE, SIDE, 3), (255, 0, 0)))
    errors = store.markers("rgb")[0]["errors"]
    assert [(e["key"], e["stage"], e["retryable"]) for e in errors] == [("broken", "decode", False)]
    assert store.verify() == []


def test_old_stores_without_a_kind_hold_images(tmp_path):
    index = CorpusIndex("/corpus", "folder", keys=["a", "b"], sources=["/corpus/a.jpg", "/corpus/b.jpg"],
                        offsets=[-1, -1], sizes=[-1, -1], captions=["", ""])
    uri = str(tmp_path / "labels.zarr")
    store = LabelStore.create(uri, index, 16, 1)
    assert store.attrs()["sample_kind"] == "image"
    assert store.array_info("crop_box") == ((2, 4), np.dtype("int32"))
    assert store.reader("crop_box").chunks == (1, 4)
    del store.group.attrs["sample_kind"]  # as written before sample kinds existed
    old = LabelStore.open(uri)
    assert old.sample_kind == "image" and old.kind is kind_of("image")
    np.testing.assert_array_equal(old.crop_boxes(), np.zeros((2, 4)))
    assert old.status()["sample_kind"] == "image"
