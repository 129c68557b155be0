"""`omnimill tokenizer train|eval`: make a tokenizer for one modality, and measure it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from omnimill.errors import UserError, fail

tokenizer_app = typer.Typer(help="Train and evaluate tokenizers.", no_args_is_help=True)
console = Console()


@tokenizer_app.command("train")
def train(
    store: Annotated[str, typer.Argument(help="Label store.")],
    field: Annotated[str, typer.Option(help="TEACHER/FIELD (e.g. canny/edges, dinov2/cls), a whole TEACHER "
                                            "for sequences (palette, detection), or caption.")],
    kind: Annotated[str, typer.Option(help="spatial | vector | mask | sequence | audio (log-mel segments, "
                                           "e.g. log_mel/mel)")],
    out: Annotated[Path, typer.Option(help="Tokenizer directory to write.")],
    preset: Annotated[Optional[str], typer.Option(help="Shapes by the field's kind: 4m (4M-21's). `--preset list` "
                                                       "shows them; options given beside it win.",
                                                  callback=lambda value: _list_presets() if value == "list" else value,
                                                  is_eager=True)] = None,
    vocab: Annotated[Optional[int], typer.Option(help="Codebook size (fsq: the nearest recommended levels). "
                                                      "(default 1024)")] = None,
    quantizer: Annotated[Optional[str], typer.Option(help="fsq, fsq-exact (exactly --vocab codes, a power of 2) "
                                                          "or vq. (default fsq)")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training steps. (default by device: spatial 2000 on CUDA, "
                                                      "400 on CPU; other kinds 2000)")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Samples per step. (default by device: spatial 32 on "
                                                           "CUDA, 16 on CPU; other kinds 32)")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate. (default 0.002)")] = None,
    input_size: Annotated[Optional[int], typer.Option(help="Spatial: side fed to the encoder (default by device: "
                                                           "256 on CUDA, 64 on CPU; a feature grid: its own side).")] \
        = None,
    grid: Annotated[Optional[int], typer.Option(help="Spatial: tokens per side (default 16); mask: tokens per side "
                                                     "of one instance's mask (default 4).")] = None,
    width: Annotated[Optional[int], typer.Option(help="Spatial, mask, audio: channels of the first stage. "
                                                      "(default by device: spatial 64 on CUDA, 16 on CPU; mask, "
                                                      "audio 64)")] = None,
    n_tokens: Annotated[Optional[int], typer.Option(help="Vector: tokens per vector; audio: tokens per time step. "
                                                         "(default 8)")] = None,
    time_stride: Annotated[Optional[int], typer.Option(help="Audio: log-mel frames per time step, a power of 2 "
                                                            "(default 8: 80 ms at a 10 ms hop).")] = None,
    tokens_per_sample: Annotated[Optional[int], typer.Option(help="Sequence: tokens per sample.")] = None,
    mode: Annotated[Optional[str], typer.Option(help="Override the value mode: image, continuous, unit, "
                                                     "binary, classes.")] = None,
    holdout: Annotated[Optional[float], typer.Option(help="Share of samples held out for eval. (default 0.1)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="(default 0)")] = None,
    option: Annotated[list[str], typer.Option("--option", "-o", help="Sequence: a serializer setting KEY=VALUE, "
                                              "repeatable (e.g. structure=sam_instances, mask_tokenizer=DIR); "
                                              "VALUE is JSON or text.")] = [],
    no_progress: Annotated[bool, typer.Option("--no-progress")] = False,
):
    """Train a tokenizer on one modality of STORE.

    Defaults by device: the real-size spatial tokenizer on CUDA, a smaller one on CPU (minutes, a few GB).

    Options you give always win; config.json records what the device chose (options.defaults).

    After a few steps, one line: "about N minutes for S steps on DEVICE"."""
    from omnimill.tokenize.quantizer import KINDS as QUANTIZERS
    from omnimill.tokenize.train import train_tokenizer

    if kind not in ("spatial", "vector", "mask", "sequence", "audio"):
        fail(f"--kind must be spatial, vector, mask, sequence or audio, not {kind!r}")
    if quantizer is not None and quantizer not in QUANTIZERS:
        fail(f"--quantizer must be {', '.join(QUANTIZERS)}, not {quantizer!r}")
    given = dict(vocab=vocab, quantizer=quantizer, steps=steps, batch_size=batch_size, lr=lr, input_size=input_size,
                 grid=grid, width=width, n_tokens=n_tokens, time_stride=time_stride,
                 tokens_per_sample=tokens_per_sample, mode=mode,
                 holdout=holdout, seed=seed)
    settings = {k: v for k, v in given.items() if v is not None}  # what the user typed; the rest: defaults
    if option:
        if kind != "sequence":
            fail("--option sets a sequence tokenizer's serializer; drop it for --kind " + kind)
        settings["serializer"] = _serializer_options(option)
    try:
        record = None
        if preset:
            from omnimill.tokenize.presets import preset_overrides

            settings, record = preset_overrides(preset, store, field, kind, settings)
        path = train_tokenizer(store, field, kind, out, progress=not no_progress, **settings)
        if record:
            from omnimill.tokenize.presets import record_preset

            record_preset(path, record)
    except UserError as e:
        fail(str(e))
    if record:
        console.print(f"preset {preset} ({record['row']}): set {record['set']}"
                      + (f"; yours kept: {record['overridden']}" if record["overridden"] else ""))
    console.print(f"wrote {path}")


def _serializer_options(items: list[str]) -> dict:
    """KEY=VALUE pairs; VALUE parsed as JSON when it is JSON (numbers, lists), else kept as text (paths)."""
    import json

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--option takes KEY=VALUE, not {item!r}")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options


@tokenizer_app.command("presets")
def presets():
    """The tokenizer presets: for each, the shapes it gives by the field's kind."""
    from omnimill.tokenize.presets import table

    typer.echo(table())


def _list_presets():
    """`--preset list`: the table, before the options a training run requires are asked for."""
    presets()
    raise typer.Exit()


@tokenizer_app.command("eval")
def evaluate(
    directory: Annotated[Path, typer.Argument(help="Tokenizer directory.")],
    store: Annotated[str, typer.Argument(help="Label store holding the tokenizer's field.")],
    max_samples: Annotated[int, typer.Option(help="Held-out samples to measure.")] = 256,
    listen: Annotated[int, typer.Option(help="Audio: held-out clips written as WAV files (original and decoded).",
                                        min=0)] = 4,
):
    """Metrics on held-out samples (metrics.json) and pictures (reconstructions, usage, curve); audio: WAV files."""
    from omnimill.tokenize.evaluate import evaluate_tokenizer

    try:
        metrics = evaluate_tokenizer(directory, store, max_samples=max_samples, listen=listen)
    except UserError as e:
        fail(str(e))
    console.print_json(json.dumps(metrics))
