"""Typed configs: flags, files, errors."""

from __future__ import annotations

import json

import pytest

from omnimill.errors import UserError
from omnimill.train.config import TrainConfig, apply_overrides, from_dict, load_config, to_dict


def test_flags_set_dotted_and_unique_leaf_names(tmp_path):
    config = TrainConfig()
    changed = apply_overrides(config, ["--optim.lr=3e-4", "dim=64", "--amp=false", "weights=0.8,0.2",
                                       "datasets=a,b"])
    assert changed == ["optim.lr", "model.dim", "optim.amp", "data.weights", "data.datasets"]
    assert config.optim.lr == 3e-4 and config.model.dim == 64 and config.optim.amp is False
    assert config.data.weights == [0.8, 0.2] and config.data.datasets == ["a", "b"]
    assert from_dict(json.loads(json.dumps(to_dict(config)))) == config


def test_file_then_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"steps": 7, "model": {"dim": 48}}))
    config = load_config(path, ["steps=9"])
    assert config.steps == 9 and config.model.dim == 48 and config.model.heads == 4


@pytest.mark.parametrize("flag, fragment", [
    ("lr", "KEY=VALUE"), ("nope=1", "unknown setting"), ("dim=big", "is not a int"),
    ("amp=maybe", "is not a bool"), ("layers=2", "unknown setting"),
])
def test_bad_flags_say_what_to_do(flag, fragment):
    with pytest.raises(UserError, match=fragment):
        apply_overrides(TrainConfig(), [flag])


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="no config file"):
        load_config(tmp_path / "missing.json", [])
    (tmp_path / "bad.json").write_text('{"model": {"depth": 3}}')
    with pytest.raises(UserError, match="unknown setting model.depth"):
        load_config(tmp_path / "bad.json", [])
