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
