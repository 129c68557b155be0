"""omnimill/labelers/video_caption.py: tiny real BLIP and GIT captioners (random weights, saved with
save_pretrained and loaded offline through the teacher) on chosen frames of a clip, a tiny real GIT trained
for several frames (num_image_with_embedding) captioning a clip at once, each compared with transformers'
own generate on the same frames; then `omnimill label --sample-kind clip` through the CLI."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from conftest import jpeg_bytes
from omnimill.corpus.image import decode_view
from omnimill.errors import UserError
from omnimill.labelers.base import Batch, TeacherSpec
from omnimill.labelers.registry import build
from omnimill.labelers.video_caption import chosen_frames, distinct_in_order
from test_caption import SMALL, WORDS, tiny_bert_tokenizer, tiny_blip, tiny_git  # noqa: F401 (fixtures)

VIDEO = "omnimill.labelers.video_caption:VideoCaptioner"
S = 32  # view size: the tiny models' own image size
T = 8  # frames per clip, the clip kind's default
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def tiny_git_video(tmp_path_factory):
    """GitForCausalLM trained (here: built) for 4 frames at once, as microsoft/git-base-vatex is for 6."""
    from transformers import GitConfig, GitForCausalLM

    path = tmp_path_factory.mktemp("ckpt") / "tiny-git-video"
    tokenizer = tiny_bert_tokenizer(path)
    config = GitConfig(vision_config=dict(image_size=32, patch_size=8, **SMALL), vocab_size=len(tokenizer),
                       max_position_embeddings=64, bos_token_id=2, eos_token_id=3, pad_token_id=0,
                       num_image_with_embedding=4, **SMALL)
    torch.manual_seed(0)
    GitForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def teacher(path, **options):
    t = build(TeacherSpec(VIDEO, str(path), options), S)
    t.load("cpu", "float32")
    return t


def clips(n: int, has_video=None) -> Batch:
    """n clips of T different photos each; `has_video` False rows are black, as an audio file's frames are."""
    has_video = np.ones(n, bool) if has_video is None else np.asarray(has_video)
    views = np.stack([np.stack([decode_view(jpeg_bytes(c * T + t), S).view for t in range(T)]) for c in range(n)])
    views[~has_video] = 0
    infos = [decode_view(jpeg_bytes(c * T), S).info for c in range(n)]
    return Batch(views, infos, [f"v/clip_{c:04d}" for c in range(n)],
                 clips={"has_video": has_video, "frames": views, "subtitles": [[] for _ in range(n)]})


def reference_pixels(frames: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> what BLIP and GIT are fed: bicubic to 32, CLIP's mean and std."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(32, 32), mode="bicubic", antialias=True, align_corners=False)
    return (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def library_captions(model_class, path, pixels) -> list[str]:
    from transformers import AutoTokenizer

    model = model_class.from_pretrained(path).eval()
    with torch.inference_mode():
        ids = model.generate(pixel_values=pixels, num_beams=3, do_sample=False, max_new_tokens=12)
    return [t.strip() for t in AutoTokenizer.from_pretrained(path).batch_decode(ids, skip_special_tokens=True)]


def test_frames_are_spread_evenly_and_captions_kept_once_in_frame_order():
    assert chosen_frames(8, 1) == [4] and chosen_frames(8, 8) == list(range(8))
    assert chosen_frames(8, 3) == [1, 4, 6] and chosen_frames(8, 4) == [1, 3, 5, 7]  # every other frame
    assert chosen_frames(2, 4) == [0, 0, 1, 1]  # fewer frames than asked: repeated
    assert distinct_in_order(["a cat", "", "a dog", "a cat"], [1, 3, 5, 7]) == [("a cat", 1), ("a dog", 5)]


@pytest.mark.parametrize("family", ["blip", "git"])
def test_chosen_frames_are_captioned_by_the_models_own_beam_search(family, tiny_blip, tiny_git):
    from transformers import BlipForConditionalGeneration, GitForCausalLM

    path = tiny_blip if family == "blip" else tiny_git
    t = teacher(path, frames=3, max_new_tokens=12)
    assert t.sees == "clips" and t.mode == "frames"
    assert [(f.name, f.shape, f.dtype, f.kind) for f in t.fields()] == [
        ("caption", (), "str", "text"), ("frame_captions", (3,), "str", "text"),
        ("frame_index", (3,), "int32", "scalar"), ("count", (), "int32", "count")]
    b = clips(3, has_video=[True, False, True])
    out = t(b)

    frames = [1, 4, 6]  # chosen_frames(8, 3)
    model_class = GitForCausalLM if family == "git" else BlipForConditionalGeneration
    with_video = b.views[[0, 2]][:, frames]
    expected = library_captions(model_class, path, reference_pixels(with_video.reshape(-1, S, S, 3)))
    for i, row in ((0, expected[:3]), (2, expected[3:])):
        kept = distinct_in_order(row, frames)
        assert out["caption"][i] == "; ".join(c for c, _ in kept)
        assert out["count"][i] == len(kept) >= 1
        assert list(out["frame_captions"][i, :len(kept)]) == [c for c, _ in kept]
        assert out["frame_index"][i, :len(kept)].tolist() == [f for _, f in kept]
        assert not any(out["frame_captions"][i, len(kept):]) and (out["frame_index"][i, len(kept):] == -1).all()
        assert all(set(c.split()) <= set(WORDS) for c in row)  # words, special tokens dropped
    # a clip without video: the absent value, not a caption of black frames
    assert out["caption"][1] == "" and out["count"][1] == 0 and (out["frame_index"][1] == -1).all()
    assert not any(out["frame_captions"][1])

    middle = teacher(path, max_new_tokens=12)  # default: the middle frame alone
    assert middle.fields()[1].shape == (1,)
    one = middle(clips(1))
    assert one["caption"][0] == library_captions(model_class, path, reference_pixels(b.views[0, [4]]))[0]
    assert one["frame_index"].tolist() == [[4]]


def test_a_git_trained_on_clips_sees_its_frames_together(tiny_git_video):
    from transformers import GitForCausalLM

    t = teacher(tiny_git_video, max_new_tokens=12)
    assert t.mode == "video" and t.frames == 4 and t.provenance()["config"]["mode"] == "video"
    assert [(f.name, f.shape) for f in t.fields()] == [("caption", ()), ("frame_index", (4,))]
    b = clips(3, has_video=[True, True, False])
    out = t(b)
    frames = [1, 3, 5, 7]  # chosen_frames(8, 4)
    seen = b.views[:2][:, frames]  # (2, 4, S, S, 3)
    pixels = reference_pixels(seen.reshape(-1, S, S, 3)).reshape(2, 4, 3, 32, 32)
    assert out["caption"][:2].tolist() == library_captions(GitForCausalLM, tiny_git_video, pixels)
    assert out["frame_index"].tolist() == [frames, frames, [-1] * 4]
    assert out["caption"][2] == ""
    with pytest.raises(UserError, match="captions 4 frames at once.*set it to 4"):
        build(TeacherSpec(VIDEO, str(tiny_git_video), {"frames": 3}), S)
    assert build(TeacherSpec(VIDEO, str(tiny_git_video), {"frames": 4}), S).frames == 4


def test_bad_options_and_checkpoints_are_refused_naming_the_teacher(tiny_blip, tiny_dinov2, tmp_path):
    import shutil

    for n in (0, 65):
        with pytest.raises(UserError, match="teacher video_captioner: frames must be 1..64"):
            build(TeacherSpec(VIDEO, str(tiny_blip), {"frames": n}), S)
    with pytest.raises(UserError, match="has no option 'num_captions'"):
        build(TeacherSpec(VIDEO, str(tiny_blip), {"num_captions": 2}), S)
    with pytest.raises(UserError, match="video_captioner.*not a loadable BLIP or GIT captioning checkpoint.*'dinov2'"):
        build(TeacherSpec(VIDEO, str(tiny_dinov2)), S)
    shutil.copytree(tiny_blip, tmp_path / "no-tokenizer", ignore=shutil.ignore_patterns("tokenizer*", "vocab.txt"))
    with pytest.raises(UserError, match="teacher video_captioner: .*no tokenizer"):
        build(TeacherSpec(VIDEO, str(tmp_path / "no-tokenizer")), S)
    provenance = build(TeacherSpec(VIDEO, str(tiny_blip)), S).provenance()
    assert provenance["sees"] == "clips" and provenance["checkpoint_sha256"]
    assert provenance["config"]["frames"] == 1 and provenance["config"]["model_type"] == "blip"


# ---------------------------------------------------------------- through the CLI


@pytest.fixture
def media(tmp_path):
    """a.mp4: 4 s of moving photos with audio and subtitles; tone.wav: 2 s of audio, no video."""
    av = pytest.importorskip("av")
    from test_corpus_clip import SRT, write_video

    from conftest import photo

    root = tmp_path / "media"
    root.mkdir()
    write_video(str(root / "a.mp4"), seconds=4.0, size=(48, 48), picture=lambda i: photo(i // 5, 48, 48))
    (root / "a.srt").write_text(SRT)
    buf = io.BytesIO()
    with av.open(buf, "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=16000)
        stream.layout = "mono"
        from test_corpus_clip import write_tone

        write_tone(out, stream, 2.0, 440.0)
    (root / "tone.wav").write_bytes(buf.getvalue())
    return root


def test_label_clips_with_the_video_captioner_through_the_cli(media, tmp_path, tiny_blip):
    from omnimill.cli import app
    from omnimill.store.labels import LabelStore

    store = tmp_path / "clips.zarr"
    spec = f"{VIDEO}={tiny_blip}"
    result = CliRunner().invoke(app, [
        "label", str(media), str(store), "--sample-kind", "clip", "--clips", "fixed:2", "--teacher", "rgb",
        "--teacher", spec, "--option", f"{VIDEO}.frames=2", "--option", f"{VIDEO}.max_new_tokens=8",
        "--workers", "1", "--unit-size", "2", "--view-size", str(S), "--no-progress"])
    assert result.exit_code == 0, result.output

    labels = LabelStore.open(str(store))
    assert list(labels.keys()) == ["a/clip_0000", "a/clip_0001", "tone/clip_0000"]
    assert labels.ok("video_captioner").all()
    out = labels.outputs("video_captioner")
    assert out["caption"].shape == (3,) and out["frame_captions"].shape == (3, 2)
    assert labels.provenance("video_captioner")["sees"] == "clips"
    # the same captions as the teacher gives on the stored frames (the rgb teacher keeps them, (N, T, S, S, 3))
    frames = labels.outputs("rgb")["image"][:2]
    direct = teacher(tiny_blip, frames=2, max_new_tokens=8)(
        Batch(frames, [None, None], ["a/clip_0000", "a/clip_0001"], clips={"has_video": np.ones(2, bool)}))
    assert [str(c) for c in out["caption"][:2]] == list(direct["caption"])
    assert out["count"][:2].tolist() == direct["count"].tolist() and (out["count"][:2] >= 1).all()
    assert out["frame_index"][:2].tolist() == direct["frame_index"].tolist()
    assert str(out["caption"][2]) == "" and out["count"][2] == 0  # tone.wav: no video, the absent value
    assert labels.sample_values()["has_video"].tolist() == [True, True, False]
