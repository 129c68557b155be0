"""`omnimill train` and `omnimill generate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from omnimill.errors import UserError, fail

console = Console()
EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


def train_command(
    ctx: typer.Context,
    data: Annotated[str, typer.Argument(help="Token stores / shard sets, comma-separated (weights: "
                                             "--data.weights=0.8,0.2); --objective causal: one packed "
                                             "interleaved set, mixed with pair and text shard sets by "
                                             "--data.pairs=A,B --data.text=C (MM1: --data.preset=mm1).")],
    out: Annotated[Path, typer.Option(help="Run directory; when it holds a checkpoint, training resumes.")],
    config: Annotated[Optional[Path], typer.Option(help="JSON file shaped like the TrainConfig dataclasses.")] = None,
    progress: Annotated[bool, typer.Option(help="Print progress.")] = True,
):
    """Masked multimodal pretraining (4M) on token shards, or next-token prediction on one packed interleaved set
    (--objective causal), alone or in MM1's mixture with image-caption pair and text-only shard sets (--data.pairs,
    --data.text; --data.preset=mm1 or --data.mix='{"interleaved": 0.5, ...}'). Settings: --section.key=value (e.g.
    --optim.lr=3e-4, --model.dim=384, --steps=5000) or a unique key (--lr=3e-4); `docs/TRAINING.md` lists them."""
    from omnimill.train.config import RESUMABLE, changed_settings, from_dict, load_config
    from omnimill.train.loop import read_commit, train

    try:
        cfg = load_config(config, ctx.args)
        cfg.data.datasets = [d for d in data.split(",") if d]
        if cfg.objective != "causal" and (cfg.data.pairs or cfg.data.text):
            raise UserError("data.pairs and data.text mix pair and text sets into a causal run (--objective causal); "
                            "for 4M list every dataset in DATA")
        commit = read_commit(out)  # the checkpoint's own config: config.json is for people, never read back
        if commit is not None:
            old = from_dict(commit["config"])
            changed = [k for k in changed_settings(cfg, old) if k not in RESUMABLE]
            if changed:
                raise UserError(f"{out} holds a run with other settings ({', '.join(changed)}); resume it with the "
                                f"same ones (only {', '.join(sorted(RESUMABLE))} may change) or use a new --out")
        result = train(cfg, out, progress=progress)
    except UserError as e:
        fail(str(e))
    if progress:
        below = [k for k, v in result["heldout"].items() if v < result["baseline"].get(k, float("inf"))]
        what = ("token kinds and sources" if cfg.data.pairs or cfg.data.text else "token kinds") \
            if cfg.objective == "causal" else "modalities"
        console.print(f"done: step {result['step']}; held-out loss below the unigram baseline for "
                      f"{len(below)}/{len(result['heldout'])} {what}; {out}/curve.png", highlight=False)


def convert_command(
    run: Annotated[Path, typer.Argument(help="Run directory holding a checkpoint.pt of an older omnimill.")],
):
    """Rewrite an old pickled checkpoint.pt as safetensors + JSON, so that the run resumes and generates. Only for
    a file you trust: it is read by torch's weights-only unpickler (tensors and plain data, no code)."""
    from omnimill.train.loop import convert_legacy

    try:
        step = convert_legacy(run)
    except UserError as e:
        fail(str(e))
    console.print(f"converted {run}/checkpoint.pt (step {step}); the old file is now checkpoint.pt.converted",
                  highlight=False)


def generate_command(
    run: Annotated[Path, typer.Argument(help="Run directory (with checkpoint.json).")],
    from_: Annotated[Optional[str], typer.Option("--from", help="Source modalities, comma-separated (rgb, "
                                                                "caption, ...); a 4M run.")] = None,
    to: Annotated[Optional[str], typer.Option(help="Target modality; a 4M run.")] = None,
    key: Annotated[Optional[str], typer.Option(help="Sample key in the run's data; a 4M run.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="PNG to write; a 4M run.")] = None,
    continue_: Annotated[Optional[str], typer.Option("--continue", help="A causal run: continue this document "
                                                     "(DOC_KEY, or a sequence key: its first document) of the "
                                                     "run's packed set (a mixture run's too) from its first "
                                                     "half.")] = None,
    tokens: Annotated[int, typer.Option(help="--continue: tokens to sample at most (stops at EOD).")] = 64,
    prefix: Annotated[Optional[int], typer.Option(help="--continue: tokens of the document the model sees "
                                                       "(default: half).")] = None,
    steps: Annotated[int, typer.Option(help="MaskGIT decoding steps.")] = 8,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 = most likely token.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
):
    """Predict one modality from others for one sample (clips too: frames + audio -> caption), decoded by its
    tokenizer, beside the teacher's label; a text target is printed too, and whether the sample was held out.
    A causal run continues a document instead (--continue KEY), printing the text through the text tokenizer."""
    if continue_ is not None:
        return _continue(run, continue_, tokens, prefix, temperature, seed)
    from omnimill.train.generate import generate_picture

    missing = [flag for flag, value in (("--from", from_), ("--to", to), ("--key", key), ("--out", out)) if not value]
    if missing:
        fail(f"generate needs {', '.join(missing)} (or --continue KEY for a causal run)")
    try:
        facts = generate_picture(run, from_, to, key, out, steps, temperature, seed)
    except UserError as e:
        fail(str(e))
    accuracy = facts["token_accuracy"]
    console.print(f"{facts['key']}: {', '.join(facts['sources'])} -> {facts['target']}"
                  + (f" (token accuracy {accuracy:.1%})" if accuracy is not None else "") + f" -> {out}",
                  highlight=False)
    if facts["text"] is not None:  # a caption or transcript: the words themselves, beside the teacher's
        console.print(f"  predicted: {facts['text']!r}\n  teacher:   {facts['teacher_text']!r}", highlight=False)
    console.print("  (a held-out sample: the run never trained on it)" if facts["held_out"] else
                  "  (a training sample: the run saw it, so this is no evidence of generalisation)", highlight=False)


def _continue(run: Path, key: str, tokens: int, prefix: int | None, temperature: float, seed: int) -> None:
    from omnimill.train.causal import continue_document

    try:
        facts = continue_document(run, key, tokens, prefix, temperature, seed)
    except UserError as e:
        fail(str(e))
    accuracy = facts["token_accuracy"]
    console.print(f"{facts['key']} (sequence {', '.join(facts['sequences'])}): {len(facts['prefix_tokens'])} tokens given, "
                  f"{len(facts['tokens'])} sampled" + (f", {accuracy:.1%} equal to the document's own"
                                                       if accuracy is not None else ""), highlight=False)
    console.print(f"  given:     {facts['prefix']!r}\n  continued: {facts['continuation']!r}\n"
                  f"  document:  {facts['truth']!r}", highlight=False)
    console.print("  (held out: the run never trained on it)" if facts["held_out"] else
                  "  (the run trained on it, or on part of it: no evidence of generalisation)", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("train", context_settings=EXTRA_ARGS)(train_command)
    app.command("generate")(generate_command)
    app.command("train-convert")(convert_command)
