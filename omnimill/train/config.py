"""Typed training configuration: dataclasses, read from a JSON file and `--section.key=value` flags.

Every checkpoint holds `asdict(TrainConfig)`; a resumed run takes the checkpoint's config (flags may change
only what cannot change the run's meaning: steps, eval and checkpoint cadence, log interval).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

from omnimill.errors import UserError


@dataclass
class DataConfig:
    datasets: list[str] = field(default_factory=list)  # token stores / shard sets, local or fsspec URLs
    weights: list[float] = field(default_factory=list)  # per dataset, counting samples (empty: equal)
    modalities: list[str] = field(default_factory=list)  # empty: every modality of the datasets; names as in
    #                                                      batches (after `rename`); each dataset reads those it has
    rename: dict[str, dict[str, str]] = field(default_factory=dict)  # dataset -> {stored name: name in batches}:
    #   an image store's rgb_image and a clip store's (8 frames) under one name cannot share a batch, so one is
    #   renamed: {"clips.tokens": {"rgb_image": "rgb_frames"}}
    batch_size: int = 32  # per process and micro-step
    num_workers: int = 2  # DataLoader workers per process
    shuffle_buffer: int = 1000
    holdout: float = 0.05  # share of keys held out for evaluation (by key hash)
    crops: str = "random"
    # objective=causal: DATA is one packed interleaved set; MM1's mixture adds token shard sets (or stores)
    pairs: list[str] = field(default_factory=list)  # image-caption pairs: image_modality + text_modality
    text: list[str] = field(default_factory=list)  # text only: text_modality
    image_modality: str = "rgb_image"  # the pairs' image tokens (the interleaved set's image tokenizer)
    text_modality: str = "caption"  # the pairs' and text sets' text (the interleaved set's text tokenizer)
    preset: str = "mm1"  # batches per kind when pairs or text are given: mm1 = interleaved 45 / pairs 45 / text 10
    mix: dict[str, float] = field(default_factory=dict)  # {kind: weight} instead of the preset, counting batches


@dataclass
class ModelConfig:
    dim: int = 256
    encoder_layers: int = 4
    decoder_layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0


@dataclass
class MaskConfig:
    input_tokens: int = 128  # encoder budget per sample
    target_tokens: int = 128  # decoder budget per sample
    alpha: float = 1.0  # Dirichlet concentration over the sample's modalities (4M: small = few modalities)
    refill: bool = False  # give budget a short modality could not take to modalities with tokens left


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr: float = 1e-4
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 100
    grad_accum: int = 1  # micro-steps per optimizer step
    grad_clip: float = 1.0
    amp: bool = True  # bfloat16 autocast on CUDA; ignored on CPU


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 1000  # optimizer steps
    eval_every: int = 100
    eval_batches: int = 20
    checkpoint_every: int = 200
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    objective: str = "4m"  # "4m": masked modelling over token stores / shard sets (data, mask); "causal": next-token
    #                        prediction over packed interleaved sequences (one shard set, optionally mixed with
    #                        pair and text shard sets: data.pairs, data.text; model.decoder_layers blocks)
    causal_image_loss: bool = True  # causal: image tokens (ids or placeholder slots) count in the loss


OBJECTIVES = ("4m", "causal")


# Settings a resumed run may change without changing what it computes.
RESUMABLE = {"steps", "eval_every", "eval_batches", "checkpoint_every", "log_every", "device"}


def to_dict(config: TrainConfig) -> dict:
    return asdict(config)


def from_dict(values: dict) -> TrainConfig:
    return _build(TrainConfig, values, "")


def _build(cls, values: dict, prefix: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(f"unknown setting {prefix}{unknown[0]}; known: {', '.join(prefix + k for k in known)}")
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        kwargs[name] = _build(type(default), value, f"{prefix}{name}.") if is_dataclass(default) else value
    return cls(**kwargs)


def _leaves(config, prefix: str = "") -> dict[str, tuple[object, str]]:
    """{'optim.lr': (owner dataclass, 'lr'), ...}"""
    out = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if is_dataclass(value):
            out.update(_leaves(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = (config, f.name)
    return out


def changed_settings(new: TrainConfig, old: TrainConfig) -> list[str]:
    """Dotted names of the settings whose values differ (a resumed run compares them with its checkpoint's)."""
    before = _leaves(old)
    return [k for k, leaf in _leaves(new).items() if getattr(*leaf) != getattr(*before[k])]


def _parse(text: str, like):
    if isinstance(like, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    if isinstance(like, dict):  # JSON: --rename='{"clips.tokens": {"rgb_image": "rgb_frames"}}'
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError(text)
        return value
    if isinstance(like, list):
        items = [t for t in text.split(",") if t]
        return [float(t) for t in items] if like and isinstance(like[0], float) else items
    return type(like)(text)


def apply_overrides(config: TrainConfig, overrides: list[str]) -> list[str]:
    """Apply `key=value` / `--key=value` settings; a key is dotted (optim.lr) or a unique leaf name (lr).
    Returns the dotted names changed."""
    leaves = _leaves(config)
    changed = []
    for item in overrides:
        key, sep, text = item.lstrip("-").partition("=")
        key = key.replace("-", "_")
        if not sep:
            raise UserError(f"settings are KEY=VALUE (e.g. --optim.lr=3e-4), not {item!r}")
        matches = [k for k in leaves if k == key or k.endswith("." + key)]
        if len(matches) != 1:
            hint = "ambiguous, say which: " + ", ".join(matches) if matches else "unknown setting"
            raise UserError(f"{key}: {hint}; settings are {', '.join(leaves)}")
        owner, name = leaves[matches[0]]
        like = getattr(owner, name)
        if name == "weights" and not like:
            like = [1.0]
        try:
            setattr(owner, name, _parse(text, like))
        except ValueError:
            raise UserError(f"{matches[0]}={text!r} is not a {type(like).__name__}") from None
        changed.append(matches[0])
    return changed


def load_config(path: str | Path | None, overrides: list[str]) -> TrainConfig:
    """Defaults, then the JSON file (nested like the dataclasses), then the flags."""
    config = TrainConfig()
    if path:
        try:
            config = from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise UserError(f"no config file at {path}") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON ({e})") from None
    apply_overrides(config, overrides)
    if config.objective not in OBJECTIVES:
        raise UserError(f"objective={config.objective!r}: it is one of {', '.join(OBJECTIVES)}")
    return config
