"""The README's examples run as written, so the docs cannot rot."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_images

README = Path(__file__).parents[1] / "README.md"


def readme_blocks(tour: str = "") -> list[tuple[str, str]]:
    """(language, code) of every fenced block right after a `<!-- readme-test ... -->` marker: the image tour's
    (markers `readme-test: ...`), or another tour's (`readme-test clips: ...` for tour="clips")."""
    pattern = re.compile(r"<!-- readme-test(?: (\w+))?:[^>]*-->\s*```(\w+)\n(.*?)```", re.S)
    return [(lang, code) for name, lang, code in pattern.findall(README.read_text()) if name == tour]


def test_readme_tour_runs(tmp_path, tiny_dinov2):
    blocks = readme_blocks()
    assert [lang for lang, _ in blocks] == ["bash", "python", "bash", "bash"]
    write_images(tmp_path / "photos" / "beach", 6)
    for i, path in enumerate(sorted((tmp_path / "photos" / "beach").glob("*.jpg"))):
        path.rename(path.with_name(f"{i + 1:04d}.jpg"))
    write_images(tmp_path / "photos" / "city", 4)
    shutil.copytree(tiny_dinov2, tmp_path / "models" / "dinov2-small")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    for line in blocks[0][1].strip().splitlines():
        run = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{line}\n{run.stdout}\n{run.stderr}"
    assert (tmp_path / "sample.png").stat().st_size > 10_000

    run = subprocess.run([sys.executable, "-c", blocks[1][1]], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "(384, 384) (16, 16, 32) True" in run.stdout

    for line in blocks[2][1].strip().splitlines():  # verify, and a repair with nothing to repair
        run = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{line}\n{run.stdout}\n{run.stderr}"

    for line in blocks[3][1].strip().splitlines():  # tokenizers, tokens, shards, training, generation
        run = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{line}\n{run.stdout}\n{run.stderr}"
    assert (tmp_path / "generated.png").stat().st_size > 10_000 and (tmp_path / "run" / "curve.png").exists()


def test_readme_clip_tour_runs(tmp_path):
    """The clip tour: a 4 s video with a tone and subtitles, labelled per clip, its status, its clip panel."""
    pytest.importorskip("av")
    from test_corpus_clip import SRT, write_video

    (tmp_path / "videos").mkdir()
    write_video(str(tmp_path / "videos" / "talk.mp4"), seconds=4.0)
    (tmp_path / "videos" / "talk.srt").write_text(SRT)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    [(lang, code)] = readme_blocks("clips")
    assert lang == "bash"
    for line in code.strip().splitlines():
        run = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{line}\n{run.stdout}\n{run.stderr}"
    assert (tmp_path / "clip.png").stat().st_size > 10_000


def test_readme_documents_tour_runs(tmp_path):
    """The document tour: 12 OBELICS documents with local photos (one photo in two documents), labelled as the
    document sample kind, filtered, packed with alt captions, trained on, continued, drawn as a page."""
    import json

    import numpy as np
    from test_documents import obelics

    from omnimill.tokenize.base import TokenizerConfig
    from omnimill.tokenize.sequence import SequenceTokenizer

    photos = write_images(tmp_path / "web" / "photos", 24)
    colours = ["red", "green", "blue", "grey"]
    rows, texts = [], []
    for i in range(12):
        words = [f"the {colours[i % 4]} photo number {i} shows a scene .", "it was taken on a walk ."]
        second = photos[0] if i == 11 else photos[12 + i]  # document 11 repeats document 0's first photo
        rows.append({"images": [f"photos/{photos[i].name}", None, f"photos/{second.name}", None],
                     "texts": [None, words[0] * 2, None, words[1] * 3],
                     "metadata": [{"alt_text": f"a {colours[i % 4]} photo"}, None, None, None]})
        texts += words
    obelics(tmp_path / "web", rows, name="docs.parquet")
    values = {"captions": np.array([[t] for t in texts], dtype=object), "count": np.ones(len(texts), np.int32)}
    SequenceTokenizer.train(TokenizerConfig("sequence", "caption", [], tokens_per_sample=64), values,
                            view_size=32).save(tmp_path / "tokenizers" / "text")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1"}
    blocks = readme_blocks("documents")
    assert [lang for lang, _ in blocks] == ["bash"]
    for line in blocks[0][1].strip().splitlines():
        run = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{line}\n{run.stdout}\n{run.stderr}"
        if line.startswith("omnimill documents filter"):
            assert "11/12 documents kept" in run.stdout and "duplicate 1" in run.stdout, run.stdout
    manifest = json.loads((tmp_path / "packed" / "manifest.json").read_text())
    assert manifest["captions"]["rule"] == "alt" and manifest["holdout"]["by"] == "document"
    assert (tmp_path / "document.html").stat().st_size > 10_000
