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
    kind: Annotated[str, typer.Option(help="spatial | vector | sequence")],
    out: Annotated[Path, typer.Option(help="Tokenizer directory to write.")],
    vocab: Annotated[int, typer.Option(help="Codebook size (FSQ picks the nearest recommended levels).")] = 1024,
    quantizer: Annotated[str, typer.Option(help="fsq or vq.")] = "fsq",
    steps: Annotated[int, typer.Option(help="Training steps.")] = 2000,
    batch_size: Annotated[int, typer.Option(help="Samples per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 2e-3,
    input_size: Annotated[Optional[int], typer.Option(help="Spatial: side fed to the encoder (256).")] = None,
    grid: Annotated[int, typer.Option(help="Spatial: tokens per side.")] = 16,
    width: Annotated[int, typer.Option(help="Spatial: channels of the first stage.")] = 64,
    n_tokens: Annotated[int, typer.Option(help="Vector: tokens per vector.")] = 8,
    tokens_per_sample: Annotated[Optional[int], typer.Option(help="Sequence: tokens per sample.")] = None,
    mode: Annotated[Optional[str], typer.Option(help="Override the value mode: image, continuous, unit, "
                                                     "binary, classes.")] = None,
    holdout: Annotated[float, typer.Option(help="Share of samples held out for eval.")] = 0.1,
    seed: Annotated[int, typer.Option()] = 0,
    no_progress: Annotated[bool, typer.Option("--no-progress")] = False,
):
    """Train a tokenizer on one modality of STORE."""
    from omnimill.tokenize.train import train_tokenizer

    if kind not in ("spatial", "vector", "sequence"):
        fail(f"--kind must be spatial, vector or sequence, not {kind!r}")
    if quantizer not in ("fsq", "vq"):
        fail(f"--quantizer must be fsq or vq, not {quantizer!r}")
    try:
        path = train_tokenizer(store, field, kind, out, vocab=vocab, quantizer=quantizer, steps=steps,
                               batch_size=batch_size, lr=lr, input_size=input_size, grid=grid, width=width,
                               n_tokens=n_tokens, tokens_per_sample=tokens_per_sample, mode=mode, holdout=holdout,
                               seed=seed, progress=not no_progress)
    except UserError as e:
        fail(str(e))
    console.print(f"wrote {path}")


@tokenizer_app.command("eval")
def evaluate(
    directory: Annotated[Path, typer.Argument(help="Tokenizer directory.")],
    store: Annotated[str, typer.Argument(help="Label store holding the tokenizer's field.")],
    max_samples: Annotated[int, typer.Option(help="Held-out samples to measure.")] = 256,
):
    """Metrics on held-out samples (metrics.json) and pictures (reconstructions, usage, curve)."""
    from omnimill.tokenize.evaluate import evaluate_tokenizer

    try:
        metrics = evaluate_tokenizer(directory, store, max_samples=max_samples)
    except UserError as e:
        fail(str(e))
    console.print_json(json.dumps(metrics))
