"""omnimill/labelers: the teachers (rgb, metadata, palette, canny, dinov2), the registry, checkpoints."""

from __future__ import annotations

import hashlib
import io
import shutil
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from conftest import bad_files, jpeg_bytes, photo
from omnimill.errors import UserError
from omnimill.labelers import checkpoints
from omnimill.labelers.base import Batch, Field, Teacher, TeacherSpec
from omnimill.labelers.fields import KINDS
from omnimill.labelers.registry import available, build, teacher_class
from omnimill.corpus.image import ImageInfo, decode_view

S = 32  # view size for the weight-free teachers: small and fast


def decoded_batch(datas: list[bytes], view_size: int = S) -> Batch:
    """A Batch the way the engine makes one: decode each file, stack the views."""
    decoded = [decode_view(d, view_size) for d in datas]
    return Batch(np.stack([d.view for d in decoded]), [d.info for d in decoded],
                 [f"k{i}" for i in range(len(decoded))])


def views_batch(views: list[np.ndarray]) -> Batch:
    """A Batch of views given directly (flat colours, squares), with the ImageInfo of a square PNG."""
    side = views[0].shape[0]
    infos = [ImageInfo(side, side, "RGB", "PNG", 1000, False, (0, 0, side, side)) for _ in views]
    return Batch(np.stack(views), infos, [f"v{i}" for i in range(len(views))])


def flat(colour, side: int = S) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (side, side, 3)).copy()


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def check_fields(teacher: Teacher, out: dict, n: int) -> None:
    """Every declared field is returned with shape (n, *shape) and the declared dtype; nothing else."""
    fields = {f.name: f for f in teacher.fields()}
    assert set(out) == set(fields)
    for name, f in fields.items():
        value = out[name]
        assert value.shape == (n, *f.shape), name
        expected = np.dtype(object) if f.dtype == "str" else np.dtype(f.dtype)
        assert value.dtype == expected, name


# ---------------------------------------------------------------- weight-free teachers


@pytest.mark.parametrize("name", ["rgb", "metadata", "palette", "canny"])
def test_weight_free_teacher_outputs_match_declared_fields(name):
    teacher = build(TeacherSpec.parse(name), S)
    teacher.load("cpu", "float32")  # nothing to load; must not fail
    batch = decoded_batch([jpeg_bytes(i) for i in range(3)])
    check_fields(teacher, teacher(batch), 3)
    assert teacher.provenance()["teacher"] == name
    assert all(entry["kind"] in KINDS for entry in teacher.provenance()["fields"].values())  # every field says what it is


def test_rgb_is_the_view_itself():
    batch = decoded_batch([jpeg_bytes(1), jpeg_bytes(2)])
    teacher = build(TeacherSpec("rgb"), S)
    assert teacher.fields()[0].dense and teacher.fields()[0].shape == (S, S, 3)
    image = teacher(batch)["image"]
    assert np.array_equal(image, batch.views)
    assert image.flags.c_contiguous


def test_metadata_of_black_grey_and_noise():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    out = build(TeacherSpec("metadata"), S)(views_batch([flat(0), flat(128), flat(255), noise]))
    black, grey, white, noisy = range(4)
    assert out["brightness"][black] == 0 and out["entropy"][black] == 0
    assert out["contrast"][black] == 0 and out["sharpness"][black] == 0
    assert out["brightness"][grey] == pytest.approx(128 / 255, abs=1e-4)
    assert out["brightness"][white] == pytest.approx(1.0, abs=1e-4)
    assert out["saturation"][grey] == 0 and out["colorfulness"][grey] == 0
    assert out["entropy"][grey] == 0
    assert out["entropy"][noisy] > 7  # 256 luma levels nearly uniform: close to 8 bits
    assert out["contrast"][noisy] > 0.1 and out["sharpness"][noisy] > out["sharpness"][grey]
    assert out["saturation"][noisy] > 0.3 and out["colorfulness"][noisy] > 50


def test_metadata_saturation_and_colorfulness_of_pure_colours():
    out = build(TeacherSpec("metadata"), S)(views_batch([flat((255, 0, 0)), flat((200, 200, 200))]))
    assert out["saturation"][0] == pytest.approx(1.0)
    assert out["colorfulness"][0] > out["colorfulness"][1] == 0
    assert out["brightness"][0] == pytest.approx(0.299, abs=1e-3)  # Rec. 601 weight of red


def test_metadata_describes_the_original_file():
    landscape = jpeg_bytes(3, (96, 72))
    rotated = bad_files()["odd_exif_rotated.jpg"]  # stored 90 x 60, shown 60 x 90
    grey_png = png(np.asarray(Image.fromarray(photo(4, 40, 50)).convert("L")))
    out = build(TeacherSpec("metadata"), S)(decoded_batch([landscape, rotated, grey_png]))
    assert out["orig_width"].tolist() == [96, 60, 40]
    assert out["orig_height"].tolist() == [72, 90, 50]
    assert out["aspect_ratio"] == pytest.approx([96 / 72, 60 / 90, 40 / 50])
    assert out["file_bytes"].tolist() == [len(landscape), len(rotated), len(grey_png)]
    assert out["exif_rotated"].tolist() == [False, True, False]
    assert out["format"].tolist() == ["JPEG", "JPEG", "PNG"]
    assert out["mode"].tolist() == ["RGB", "RGB", "L"]


def two_colour(side: int, split: int) -> np.ndarray:
    view = flat((200, 30, 40), side)
    view[:, split:] = (10, 20, 230)
    return view


def test_palette_of_two_colours():
    teacher = build(TeacherSpec("palette"), 64)
    out = teacher(views_batch([two_colour(64, 32), two_colour(64, 48)]))
    assert out["count"].tolist() == [2, 2]
    for i in range(2):
        found = {tuple(c) for c in out["colors"][i, :2].tolist()}
        assert found == {(200, 30, 40), (10, 20, 230)}
        assert out["weights"][i].sum() == pytest.approx(1.0)
        assert (out["colors"][i, 2:] == 0).all() and (out["weights"][i, 2:] == 0).all()  # padding
    assert out["weights"][0, :2] == pytest.approx([0.5, 0.5])
    # 3/4 red, 1/4 blue: the most frequent colour comes first
    assert out["colors"][1, 0].tolist() == [200, 30, 40]
    assert out["weights"][1, :2] == pytest.approx([0.75, 0.25])


def test_palette_max_colors_option_and_busy_image():
    spec = TeacherSpec("palette", options={"max_colors": 4})
    teacher = build(spec, S)
    assert [f.shape for f in teacher.fields()] == [(4, 3), (4,), ()]
    out = teacher(decoded_batch([jpeg_bytes(9)]))
    check_fields(teacher, out, 1)
    assert out["count"][0] == 4  # a photo has more colours than it may keep
    assert out["weights"][0].sum() == pytest.approx(1.0)
    assert (np.diff(out["weights"][0]) <= 0).all()  # sorted by share
    assert teacher.config()["max_colors"] == 4


def test_canny_edges_on_a_square_and_none_on_a_flat_image():
    side = 64
    square = flat(0, side)
    square[16:48, 16:48] = 255
    teacher = build(TeacherSpec("canny"), side)
    edges = teacher(views_batch([square, flat(128, side)]))["edges"]
    assert edges.dtype == bool and edges.shape == (2, side, side)
    on = np.argwhere(edges[0])
    assert len(on) > 4 * 28  # most of the square's 4 x 32 border
    # every edge pixel lies within 2 pixels of the square's border
    dist = np.minimum(np.abs(on - 16), np.abs(on - 47)).min(axis=1)
    assert dist.max() <= 2
    assert not edges[0, 24:40, 24:40].any() and not edges[0, :8, :8].any()
    assert not edges[1].any()


# ---------------------------------------------------------------- dinov2

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the normalisation DINOv2 was trained with
IMAGENET_STD = (0.229, 0.224, 0.225)


def reference_tokens(path, views: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """transformers' Dinov2Model run directly on the normalised views (already 224 x 224)."""
    import torch
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(path).eval()
    x = torch.from_numpy(views).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(pixel_values=x).last_hidden_state.numpy()  # (b, 1 + 16 * 16, 32)


@pytest.fixture(scope="module")
def dino_views() -> Batch:
    """Two 224-pixel views: the teacher's input size, so no resizing stands between it and the reference."""
    return decoded_batch([jpeg_bytes(1, (256, 224)), jpeg_bytes(2, (224, 300))], view_size=224)


def load_dinov2(path, view_size: int = 224, **options) -> Teacher:
    spec = TeacherSpec.parse(f"dinov2={path}")
    spec.options.update(options)
    teacher = build(spec, view_size)
    teacher.load("cpu", "float32")
    return teacher


def test_dinov2_fields_and_shapes(tiny_dinov2):
    teacher = load_dinov2(tiny_dinov2, view_size=S)
    fields = {f.name: f for f in teacher.fields()}
    assert (fields["cls"].shape, fields["cls"].dtype) == ((32,), "float32")
    assert (fields["patches"].shape, fields["patches"].dtype) == ((16, 16, 32), "float16")  # 224 / 14 = 16
    assert fields["patches"].dense and not fields["cls"].dense
    out = teacher(decoded_batch([jpeg_bytes(i) for i in range(3)]))  # 32-pixel views, resized to 224
    check_fields(teacher, out, 3)
    assert np.isfinite(out["patches"].astype(np.float32)).all()


def test_dinov2_image_size_option_sets_the_grid(tiny_dinov2):
    teacher = load_dinov2(tiny_dinov2, view_size=S, image_size=56)
    assert [f.shape for f in teacher.fields()] == [(32,), (4, 4, 32)]  # 56 / 14 = 4
    check_fields(teacher, teacher(decoded_batch([jpeg_bytes(5)])), 1)
    with pytest.raises(ValueError, match="not a multiple of patch size 14"):
        build(TeacherSpec("dinov2", str(tiny_dinov2), {"image_size": 50}), S)


def test_dinov2_matches_transformers_and_is_deterministic(tiny_dinov2, dino_views):
    teacher = load_dinov2(tiny_dinov2)
    first, second = teacher(dino_views), teacher(dino_views)
    assert np.array_equal(first["cls"], second["cls"])
    assert np.array_equal(first["patches"], second["patches"])
    tokens = reference_tokens(tiny_dinov2, dino_views.views)
    np.testing.assert_allclose(first["cls"], tokens[:, 0], atol=1e-5, rtol=1e-5)
    # token 1 + r * 16 + c is the patch in row r, column c of the view
    expected = tokens[:, 1:].reshape(2, 16, 16, 32)
    np.testing.assert_allclose(first["patches"].astype(np.float32), expected, atol=4e-3, rtol=4e-3)
    assert not np.allclose(first["patches"][0], first["patches"][1], atol=0.05)  # two images differ


def test_dinov2_uses_the_checkpoints_normalisation(tiny_dinov2, dino_views, tmp_path):
    from transformers import BitImageProcessor

    path = tmp_path / "with-processor"
    shutil.copytree(tiny_dinov2, path)
    BitImageProcessor(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]).save_pretrained(path)
    out = load_dinov2(path)(dino_views)
    ours = reference_tokens(path, dino_views.views, mean=(0.5,) * 3, std=(0.5,) * 3)
    imagenet = reference_tokens(path, dino_views.views)
    np.testing.assert_allclose(out["cls"], ours[:, 0], atol=1e-5, rtol=1e-5)
    assert np.abs(out["cls"] - imagenet[:, 0]).max() > 1e-2


def test_dinov2_provenance_fingerprints_the_weights(tiny_dinov2, tmp_path):
    import torch
    from transformers import Dinov2Model

    teacher = build(TeacherSpec.parse(f"dinov2={tiny_dinov2}"), S)
    info = teacher.provenance()
    sha = info["checkpoint_sha256"]
    assert len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)
    assert info["teacher"] == "dinov2" and info["checkpoint"] == str(tiny_dinov2)
    assert info["checkpoint_path"] == str(tiny_dinov2.resolve())
    assert info["config"]["model_type"] == "dinov2" and info["config"]["patch_size"] == 14
    assert {"torch", "transformers", "numpy"} <= set(info["libraries"])

    copy = tmp_path / "copy"
    shutil.copytree(tiny_dinov2, copy)
    assert build(TeacherSpec("dinov2", str(copy)), S).provenance()["checkpoint_sha256"] == sha  # content, not place

    model = Dinov2Model.from_pretrained(copy)
    with torch.no_grad():
        model.embeddings.cls_token.add_(1.0)
    model.save_pretrained(copy)  # same files, same sizes, new weights
    changed = build(TeacherSpec("dinov2", str(copy)), S).provenance()["checkpoint_sha256"]
    assert changed != sha and len(changed) == 64


def test_dinov2_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build(TeacherSpec.parse(f"dinov2={tmp_path / 'no-such-model'}"), S)
    with pytest.raises(UserError, match="could not be fetched"):  # looks like a hub id; offline in tests
        build(TeacherSpec.parse("dinov2=nobody/no-such-dinov2"), S)


def test_dinov2_directory_that_is_not_a_checkpoint(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="not a loadable DINOv2 checkpoint"):
        build(TeacherSpec("dinov2", str(empty)), S)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "config.json").write_text("{ this is not json")
    with pytest.raises(UserError, match="not a loadable DINOv2 checkpoint"):
        build(TeacherSpec("dinov2", str(junk)), S)


def test_dinov2_config_without_weights_fails_on_load(tiny_dinov2, tmp_path):
    path = tmp_path / "config-only"
    path.mkdir()
    shutil.copy(tiny_dinov2 / "config.json", path / "config.json")
    teacher = build(TeacherSpec("dinov2", str(path)), S)  # building reads the config only
    with pytest.raises(UserError, match="not a loadable DINOv2 checkpoint"):
        teacher.load("cpu", "float32")


@pytest.mark.parametrize("family", ["bert", "vit"])
def test_dinov2_refuses_a_checkpoint_of_another_model(family, tmp_path):
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel

    path = tmp_path / family
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    if family == "bert":
        BertModel(BertConfig(vocab_size=64, **small)).save_pretrained(path)
    else:
        ViTModel(ViTConfig(image_size=32, patch_size=16, **small)).save_pretrained(path)
    with pytest.raises(UserError, match="DINOv2"):
        load_dinov2(path)


# ---------------------------------------------------------------- registry


class Brightest(Teacher):
    """A teacher of a user's own: the brightest channel value per sample."""

    name = "brightest"

    def fields(self):
        return [Field("value", (), "uint8")]

    def __call__(self, batch):
        return {"value": batch.views.reshape(len(batch), -1).max(axis=1)}


class NotATeacher:
    pass


def test_registry_lists_the_builtin_teachers():
    assert available() == sorted(["canny", "detection", "dinov2", "metadata", "palette", "pose", "rgb", "sam", "depth",
                                  "normals", "semseg", "clip", "imagebind", "captioner", "caption_embed",
                                  "captioner_embed", "t5_embed",
                                  # clips: teachers that see whole clips
                                  "vad", "log_mel", "asr", "clap", "audio_tags", "audio_captioner", "video_captioner",
                                  "omni_caption"])
    for name in available():
        assert teacher_class(name).name == name


def test_unknown_teacher_lists_the_available_ones():
    with pytest.raises(UserError) as info:
        build(TeacherSpec.parse("depthanything"), S)
    message = str(info.value)
    assert "unknown teacher 'depthanything'" in message
    assert all(name in message for name in available())
    assert "module.path:ClassName" in message


def test_custom_teacher_from_this_module():
    spec = TeacherSpec.parse(f"{__name__}:Brightest")
    teacher = build(spec, S)
    assert type(teacher) is Brightest and teacher.name == "brightest"
    out = teacher(views_batch([flat(10), flat((0, 200, 3))]))
    assert out["value"].tolist() == [10, 200]


def test_custom_teacher_from_a_module_on_the_path(tmp_path, monkeypatch):
    module = "omnimill_test_plugin_teachers"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent("""
        import numpy as np
        from omnimill.labelers.base import Field, Teacher

        class Darkest(Teacher):
            name = "darkest"

            def fields(self):
                return [Field("value", (), "uint8")]

            def __call__(self, batch):
                return {"value": batch.views.reshape(len(batch), -1).min(axis=1)}
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    teacher = build(TeacherSpec.parse(f"{module}:Darkest"), S)
    assert teacher.name == "darkest"
    out = teacher(views_batch([flat(10), flat((50, 200, 3))]))
    check_fields(teacher, out, 2)
    assert out["value"].tolist() == [10, 3]


def test_custom_teacher_that_cannot_be_imported_or_is_not_a_teacher():
    with pytest.raises(UserError, match="could not be imported"):
        build(TeacherSpec.parse("no_such_module_xyz:Teacher"), S)
    with pytest.raises(UserError, match="could not be imported"):
        build(TeacherSpec.parse(f"{__name__}:NoSuchClass"), S)
    with pytest.raises(UserError, match="not an omnimill.labelers.Teacher subclass"):
        build(TeacherSpec.parse(f"{__name__}:NotATeacher"), S)


@pytest.mark.parametrize("name", ["rgb", "metadata", "palette", "canny"])
def test_teacher_given_a_checkpoint_it_does_not_take(name, tmp_path):
    with pytest.raises(UserError, match=f"teacher {name} takes no checkpoint"):
        build(TeacherSpec.parse(f"{name}={tmp_path}"), S)


def test_teacher_spec_parse_and_str():
    spec = TeacherSpec.parse(" dinov2 = /models/dinov2-base ")
    assert (spec.name, spec.checkpoint) == ("dinov2", "/models/dinov2-base")
    assert str(spec) == "dinov2=/models/dinov2-base"
    assert TeacherSpec.parse("canny").checkpoint is None and str(TeacherSpec.parse("canny")) == "canny"
    assert TeacherSpec("palette", options={"max_colors": 3}).cache_key != TeacherSpec("palette").cache_key



# ---------------------------------------------------------------- teacher options


def label_cli(*args):
    from typer.testing import CliRunner

    from omnimill.cli import app

    return CliRunner().invoke(app, ["label", *map(str, args)])


@pytest.mark.parametrize("option, fragment", [
    ("canny.sigmaa=2", "teacher canny has no option 'sigmaa'; its options: sigma (float, default 0.33)"),
    ("canny.sigma=abc", "teacher canny: option sigma must be float, not 'abc'"),
    ("canny.sigma=true", "option sigma must be float, not True"),
])
def test_a_wrong_teacher_option_fails_in_one_line_and_writes_nothing(corpus, tmp_path, option, fragment):
    store = tmp_path / "labels.zarr"
    result = label_cli(corpus, store, "--teacher", "canny", "--option", option)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and fragment in lines[0], result.output
    assert not store.exists()


def test_a_valid_teacher_option_is_used_and_recorded(corpus, tmp_path):
    import zarr

    store = tmp_path / "labels.zarr"
    result = label_cli(corpus, store, "--teacher", "canny", "--option", "canny.sigma=1", "--workers", "1",
                       "--view-size", S, "--no-progress")
    assert result.exit_code == 0, result.output
    group = zarr.open_group(str(store), mode="r")
    assert group["canny"].attrs["config"]["sigma"] == 1
    assert group["canny/ok"][:].all()  # the option's effect on the edges: test_options_are_typed_and_...


def test_options_are_typed_and_change_the_output():
    canny = build(TeacherSpec("canny", options={"sigma": 1}), S)  # an int for a float option is fine
    assert canny.option("sigma") == 1.0 and isinstance(canny.option("sigma"), float)
    assert build(TeacherSpec("canny"), S).option("sigma") == 0.33  # the declared default
    views = views_batch([two_colour(S, S // 2), photo(3, S, S)])
    assert (canny(views)["edges"] != build(TeacherSpec("canny"), S)(views)["edges"]).any()
    with pytest.raises(UserError, match="option max_colors must be int, not 2.5"):
        build(TeacherSpec("palette", options={"max_colors": 2.5}), S)
    with pytest.raises(UserError, match="option max_colors must be int, not None"):
        build(TeacherSpec("palette", options={"max_colors": None}), S)
    with pytest.raises(UserError, match="teacher rgb has no option 'size'; it takes no options"):
        build(TeacherSpec("rgb", options={"size": 3}), S)
    with pytest.raises(UserError, match=f"teacher {__name__}:Brightest has no option 'x'"):
        build(TeacherSpec(f"{__name__}:Brightest", options={"x": 1}), S)  # a plugin declares its options too
    pose = teacher_class("pose")  # checked before any checkpoint is read
    pose.check_options(TeacherSpec("pose", options={"person_class": None}))  # null: the detector's own id
    with pytest.raises(UserError, match="option person_class must be int or null, not '1'"):
        pose.check_options(TeacherSpec("pose", options={"person_class": "1"}))
    with pytest.raises(UserError, match="its options: points_per_side \\(int, default 32\\), points_per_batch"):
        teacher_class("sam").check_options(TeacherSpec("sam", options={"points": 16}))


@pytest.mark.parametrize("name", available())
def test_declared_option_defaults_have_the_declared_type(name):
    for key, (kind, default) in teacher_class(name).options.items():
        assert kind in (int, float, str, bool), (key, kind)
        assert default is None or type(default) is kind, (key, default)


# ---------------------------------------------------------------- checkpoints


def test_sha256_of_a_file_is_its_plain_sha256(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"\x00\x01weights" * 1000)
    assert checkpoints.sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_sha256_of_a_directory_covers_weight_and_config_files_only(tiny_dinov2, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_dinov2, path)
    base = checkpoints.sha256(path)
    (path / "README.md").write_text("notes do not change the weights")
    assert checkpoints.sha256(path) == base
    (path / "config.json").write_text((path / "config.json").read_text().replace('"hidden_size": 32', '"hidden_size": 33'))
    assert checkpoints.sha256(path) != base


def test_resolve_finds_local_paths_and_explains_missing_ones(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert checkpoints.resolve("model", "dinov2", "dinov2=/x") == (tmp_path / "model").resolve()
    with pytest.raises(UserError, match=r"teacher sam: checkpoint './nope' does not exist; .*--teacher sam=/ckpt"):
        checkpoints.resolve("./nope", "sam", "sam=/ckpt")
