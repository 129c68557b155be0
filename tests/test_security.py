"""Issue 11, "Trust": nothing read from a run folder, a tokenizer folder, an audit index or a label store is
executed. Every file the train / generate / audit query commands read is replaced in turn by a pickle whose
unpickling touches a marker file (or a store names a plug-in module that touches it on import); the command
must leave the marker absent and exit non-zero with one line on stderr, not a traceback.
"""

from __future__ import annotations

import io
import json
import pathlib
import pickle
import shutil

import pytest
import torch
from conftest import write_images
from test_train import TINY, config
from typer.testing import CliRunner

from omnimill.cli import app

runner = CliRunner()
NOT_READ = {"log.jsonl", "baseline.json", "curve.png"}  # written by a run, never read back


class Payload:
    """Unpickling this touches `path`: proof that a loader executed data."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def plant(path: pathlib.Path, marker: pathlib.Path) -> None:
    """Replace `path` by pickle bytes: torch.save's zip for torch-like files, a plain pickle otherwise."""
    if path.suffix in (".pt", ".safetensors", ".bin"):
        buffer = io.BytesIO()
        torch.save({"model": Payload(marker), "state": Payload(marker)}, buffer)
        path.write_bytes(buffer.getvalue())
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))


def assert_refused(result, marker: pathlib.Path, what: str) -> None:
    assert not marker.exists(), f"{what}: data was executed"
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, \
        f"{what}: exit {result.exit_code}, {result.output!r} {result.exception!r}"


def test_the_payload_works(tmp_path):
    """The planted bytes do run code when unpickled: the tests below prove something."""
    marker = tmp_path / "pwned"
    plant(tmp_path / "x.pt", marker)
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert marker.exists()
    marker.unlink()
    plant(tmp_path / "x.json", marker)
    pickle.loads((tmp_path / "x.json").read_bytes())
    assert marker.exists()


# ---------------------------------------------------------------------------- run folders
@pytest.fixture(scope="module")
def run(token_data, tmp_path_factory) -> pathlib.Path:
    from omnimill.train.loop import train

    path = tmp_path_factory.mktemp("security") / "run"
    train(config(token_data["tokens"], "steps=2", "eval_every=2"), path, progress=False)
    return path


def train_args(token_data, run: pathlib.Path) -> list[str]:
    return ["train", token_data["tokens"], "--out", str(run), "--no-progress", *[f"--{f}" for f in TINY],
            "--steps=2", "--eval_every=2"]


def generate_args(token_data, run: pathlib.Path, out: pathlib.Path) -> list[str]:
    key = next(iter(token_data["captions"]))
    return ["generate", str(run), "--from", "rgb", "--to", "palette", "--key", key, "--out", str(out)]


@pytest.mark.parametrize("command", ["train", "generate"])
def test_no_file_of_a_run_folder_is_unpickled(run, token_data, tmp_path, command):
    marker = tmp_path / "pwned"
    names = sorted(p.name for p in run.iterdir() if p.is_file() and p.name not in NOT_READ)
    assert len(names) >= 2
    for name in names:
        copy = tmp_path / f"run-{name}"
        shutil.copytree(run, copy)
        plant(copy / name, marker)
        args = train_args(token_data, copy) if command == "train" else \
            generate_args(token_data, copy, tmp_path / "out.png")
        result = runner.invoke(app, args)
        if name == "config.json":  # for people: both commands take the config from checkpoint.json
            assert not marker.exists() and result.exit_code == 0, result.output
        else:
            assert_refused(result, marker, f"{command} with {name} planted")


@pytest.mark.parametrize("command", ["train", "generate"])
def test_an_old_pickled_checkpoint_is_refused_not_loaded(run, token_data, tmp_path, command):
    marker = tmp_path / "pwned"
    old = tmp_path / "old-run"
    old.mkdir()
    shutil.copy(run / "config.json", old / "config.json")
    plant(old / "checkpoint.pt", marker)
    args = train_args(token_data, old) if command == "train" else generate_args(token_data, old, tmp_path / "o.png")
    result = runner.invoke(app, args)
    assert_refused(result, marker, f"{command} of an old run")
    assert "checkpoint.pt" in result.stderr and "retrain" in result.stderr and "convert" in result.stderr
    # the converter reads it with torch's weights-only unpickler: no code runs, nothing is written
    converted = runner.invoke(app, ["train-convert", str(old)])
    assert_refused(converted, marker, "train-convert of a planted checkpoint.pt")
    assert sorted(p.name for p in old.iterdir()) == ["checkpoint.pt", "config.json"]


@pytest.mark.parametrize("tokenizer, modality, name", [("rgb", "rgb_image", "model.safetensors"),
                                                       ("rgb", "rgb_image", "config.json"),
                                                       ("palette", "palette", "tokenizer.json")])
def test_generate_with_a_planted_tokenizer_folder(run, token_data, tmp_path, tokenizer, modality, name):
    """A tokenizer of the run moved to a folder whose file is planted: generate reads it to draw."""
    marker = tmp_path / "pwned"
    folder = tmp_path / "tokenizer"
    shutil.copytree(token_data["tokenizers"][tokenizer], folder)
    assert (folder / name).exists()
    plant(folder / name, marker)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    commit = json.loads((copy / "checkpoint.json").read_text())
    commit["datasets"][modality]["tokenizer"]["path"] = str(folder)
    (copy / "checkpoint.json").write_text(json.dumps(commit))
    result = runner.invoke(app, generate_args(token_data, copy, tmp_path / "out.png"))
    assert_refused(result, marker, f"generate with the tokenizer's {name} planted")


# ---------------------------------------------------------------------------- audit indexes and stores
@pytest.fixture(scope="module")
def palette_index(token_data, tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """A copy of the token data's label store and a FAISS index of its palette/weights."""
    from omnimill.audit.index import build_index

    root = tmp_path_factory.mktemp("security-index")
    store = root / "labels.zarr"
    shutil.copytree(token_data["labels"], store)
    build_index(str(store), "palette/weights", root / "index", queries=8)
    return store, root / "index"


@pytest.mark.parametrize("name", ["info.json", "ids.npy", "keys.npy"])
def test_no_file_of_an_index_is_unpickled(palette_index, tmp_path, name):
    store, index = palette_index
    marker = tmp_path / "pwned"
    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    plant(copy / name, marker)
    result = runner.invoke(app, ["audit", "query", str(copy), "--key", "img0003", "--store", str(store)])
    assert_refused(result, marker, f"audit query with {name} planted")


def store_naming(palette_index, tmp_path, monkeypatch, module: str, body: str) -> pathlib.Path:
    """A copy of the store whose palette provenance names `module:Palette`, a module importable from
    sys.path (as a plug-in of the user's would be)."""
    store, _ = palette_index
    copy = tmp_path / "labels.zarr"
    shutil.copytree(store, copy)
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / f"{module}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    import zarr

    zarr.open_group(str(copy), mode="r+")["palette"].attrs["spec"] = f"{module}:Palette"
    return copy


@pytest.mark.parametrize("query", [["--image", "PHOTO"], ["--text", "a red ball"]])
def test_a_store_naming_an_unregistered_teacher_imports_nothing(palette_index, tmp_path, monkeypatch, query):
    marker = tmp_path / "pwned"
    module = f"evil_teacher_{query[0][2:]}"
    store = store_naming(palette_index, tmp_path, monkeypatch, module,
                         f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                         "from omnimill.labelers.palette import Palette\n")
    photo = write_images(tmp_path / "photos", 1)[0]
    args = ["audit", "query", str(palette_index[1]), "--store", str(store),
            *[str(photo) if a == "PHOTO" else a for a in query]]
    result = runner.invoke(app, args)
    assert_refused(result, marker, f"audit query {query[0]}")
    assert f"{module}:Palette" in result.stderr and "--teacher-plugin" in result.stderr
    # naming another plug-in does not import the store's one either
    other = runner.invoke(app, [*args, "--teacher-plugin", "some.other.module:Palette"])
    assert_refused(other, marker, "audit query with another --teacher-plugin")
    assert "does not match" in other.stderr


def test_a_named_plugin_is_used(palette_index, tmp_path, monkeypatch):
    """The user vouches for the store's plug-in on the command line: it is imported and runs."""
    module = "my_palette_plugin"
    store = store_naming(palette_index, tmp_path, monkeypatch, module,
                         "from omnimill.labelers.palette import Palette as _Base\n\n"
                         "class Palette(_Base):\n    pass\n")
    photo = write_images(tmp_path / "photos", 1)[0]
    result = runner.invoke(app, ["audit", "query", str(palette_index[1]), "--store", str(store), "--image",
                                 str(photo), "--teacher-plugin", f"{module}:Palette", "-k", "2"])
    assert result.exit_code == 0, result.output
    assert "neighbours of image" in result.stdout
