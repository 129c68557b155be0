"""Any-to-any prediction with a trained run: `omnimill generate RUN --from rgb,caption --to canny --key KEY`.

MaskGIT-style decoding (Chang et al. 2022), as 4M does it for one target modality:
    every target position starts unknown; at step t of T the decoder predicts all unknown positions,
    a token is drawn for each (argmax at temperature 0), and the most confident ones are fixed so that
    floor(L * cos(pi/2 * (t+1)/T)) stay unknown; fixed tokens join the encoder's inputs for the next step.
The tokens are decoded by the modality's tokenizer and drawn beside the teacher's label and the
tokenizer's reconstruction of the teacher's own tokens (the best a perfect prediction could look like).
A causal run (`--objective causal`) continues a document instead: causal.continue_document.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from omnimill.errors import UserError
from omnimill.shards.sources import TokenStoreSource, open_source
from omnimill.train.config import from_dict
from omnimill.train.loop import CHECKPOINT, first_line, load_checkpoint, specs_from
from omnimill.train.model import ModalitySpec, MultimodalModel


def load_run(run: str | Path, device: str = "cpu") -> tuple[MultimodalModel, dict]:
    """The run's model and its checkpoint.json (safetensors and JSON only: nothing is unpickled)."""
    loaded = load_checkpoint(run)
    if loaded is None:
        raise UserError(f"{run} holds no {CHECKPOINT}; train one with `omnimill train DATA --out {run}`")
    state, tensors = loaded
    if "packed" in state:  # written by causal.train_causal: one id space, no modalities
        raise UserError(f"{run} is a causal run: continue a document with `omnimill generate {run} --continue KEY`")
    try:
        specs = specs_from(state["modalities"])  # with time steps; a checkpoint from before them has none
        model = MultimodalModel(from_dict(state["config"]).model, specs)
        model.load_state_dict(tensors["model"])
    except (ValueError, TypeError, KeyError, RuntimeError) as e:  # RuntimeError: weights of another shape
        raise UserError(f"{Path(run) / CHECKPOINT} does not describe its weights ({first_line(e)}); "
                        "it is damaged") from None
    return model.to(device).eval(), state


def resolve(names: str, specs: list[ModalitySpec]) -> list[int]:
    """'rgb,caption' -> modality indices; a name matches exactly or as the teacher part (rgb -> rgb_image)."""
    out = []
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        hits = [i for i, s in enumerate(specs) if s.name == name] or \
               [i for i, s in enumerate(specs) if s.name.startswith(name + "_")]
        if len(hits) != 1:
            known = ", ".join(s.name for s in specs)
            raise UserError(f"modality {name!r} is {'ambiguous' if hits else 'not in this run'}; it has {known}")
        out.append(hits[0])
    return out


def find_sample(datasets: list[str], key: str, rename: dict[str, dict[str, str]] | None = None) -> tuple[dict, object]:
    """The sample `key` from the run's datasets, its modalities named as the run named them (`data.rename`),
    and its source."""
    for uri in datasets:
        names = (rename or {}).get(uri) or {}
        source = open_source(uri)
        if isinstance(source, TokenStoreSource):
            try:  # the store's key index: two small reads, not every key
                units = [source.store.index_of(key) // source.read_size]
            except UserError:
                units = []
        else:
            units = range(len(source.units))
        for u in units:
            unit = source.read_unit(u)
            hits = np.flatnonzero(unit.keys == key)
            if len(hits):
                return {names.get(k, k): v for k, v in unit.sample(int(hits[0])).items()}, source
    raise UserError(f"no sample {key!r} in {', '.join(datasets)}")


@torch.no_grad()
def maskgit(model: MultimodalModel, inputs: dict[int, np.ndarray], target: int, steps: int = 8,
            temperature: float = 0.0, seed: int = 0) -> np.ndarray:
    """inputs {modality index: (L_m,) token ids, -1 = not given} -> the target modality's (L,) tokens."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    length = model.modalities[target].length
    decided = np.full(length, -1, np.int64)
    for t in range(steps):
        known = {**inputs, target: decided}
        enc = [(m, p, tok) for m, row in known.items() for p, tok in enumerate(row) if tok >= 0]
        unknown = np.flatnonzero(decided < 0)
        if len(unknown) == 0:
            break

        def tensor(values, dtype=torch.long):
            return torch.tensor(values, dtype=dtype, device=device)[None]

        hidden = model.hidden(tensor([e[2] for e in enc]), tensor([e[0] for e in enc]), tensor([e[1] for e in enc]),
                              tensor([True] * len(enc), torch.bool), tensor([target] * len(unknown)),
                              tensor(unknown.tolist()), tensor([True] * len(unknown), torch.bool))
        logits = model.logits(hidden, target)[0].float().cpu()
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            chosen = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            probs = torch.softmax(logits, dim=-1)
            chosen = probs.argmax(dim=-1)
        confidence = probs.gather(1, chosen[:, None]).squeeze(1)
        keep_unknown = math.floor(length * math.cos(math.pi / 2 * (t + 1) / steps)) if t < steps - 1 else 0
        n_fix = max(1, len(unknown) - keep_unknown)
        fix = confidence.argsort(descending=True)[:n_fix].numpy()
        decided[unknown[fix]] = chosen[fix].numpy()
    return decided


def generate_picture(run: str | Path, sources: str, target: str, key: str, out: str | Path, steps: int = 8,
                     temperature: float = 0.0, seed: int = 0) -> dict:
    """Predict `target` for sample `key` from `sources`, draw it beside the teacher's label; returns facts."""
    model, state = load_run(run)
    specs = model.modalities
    source_ids, (target_id,) = resolve(sources, specs), resolve(target, specs)
    if target_id in source_ids:
        raise UserError(f"{specs[target_id].name} is both a source and the target")
    config = from_dict(state["config"])
    sample, source = find_sample(config.data.datasets, key, config.data.rename)
    inputs = {}
    for i in source_ids:
        name = specs[i].name
        if name not in sample:
            raise UserError(f"sample {key} has no {name} tokens to predict from")
        row = sample[name][0].astype(np.int64)  # crop 0: the whole view
        pad = state["datasets"][name]["pad_id"]
        inputs[i] = np.where(row == pad, -1, row) if pad >= 0 else row
    predicted = maskgit(model, inputs, target_id, steps, temperature, seed)
    truth = sample.get(specs[target_id].name)
    accuracy = float((predicted == truth[0]).mean()) if truth is not None else None
    _draw(state, source, sample, key, specs, source_ids, target_id, predicted, truth, out)
    from omnimill.store.base import held_out

    return {"key": key, "target": specs[target_id].name, "sources": [specs[i].name for i in source_ids],
            "token_accuracy": accuracy, "out": str(out), "tokens": predicted.tolist(),
            "teacher_tokens": None if truth is None else truth[0].astype(np.int64).tolist(),
            # a sample the run trained on says little about what it learned: say which kind this is
            "held_out": bool(held_out(np.array([key]), config.data.holdout, config.seed)[0]),
            "text": _text(state, specs[target_id], predicted),
            "teacher_text": None if truth is None else _text(state, specs[target_id], truth[0])}


def _text(state: dict, spec: ModalitySpec, tokens: np.ndarray) -> str | None:
    """A text modality's tokens (caption, transcript) as text through its tokenizer; None for other
    modalities or when the tokenizer is not where the run recorded it."""
    info = state["datasets"][spec.name]["tokenizer"]
    if spec.time_steps or not (Path(info.get("path", "")) / "config.json").exists():
        return None
    from omnimill.tokenize.base import load_tokenizer

    decoded = load_tokenizer(info["path"]).decode(np.asarray(tokens, np.int64)[None])
    texts = [v[0] for v in decoded.values() if isinstance(v, np.ndarray) and v.ndim and isinstance(v[0], str)]
    texts += [v for v in decoded.values() if isinstance(v, str)]
    return texts[0] if texts else None


def per_step(values: dict, step: int) -> dict:
    """One time step's values out of arrays with a leading time axis."""
    return {k: (v[step] if isinstance(v, np.ndarray) and v.ndim else v) for k, v in values.items()}


def _draw(state, source, sample, key, specs, source_ids, target_id, predicted, truth, out) -> None:
    from omnimill.audit.render import DPI, Sample, message_tile, panel, teacher_tiles, text_tile
    from omnimill.store.labels import LabelStore
    from omnimill.store.tokens import modality_name
    from omnimill.tokenize.base import load_tokenizer

    labels_uri = source.store.source.get("store") if isinstance(source, TokenStoreSource) else \
        source.manifest["source"].get("labels")
    labels = LabelStore.open(labels_uri) if labels_uri and LabelStore.exists(labels_uri) else None

    def tiles_of(name: str, tokens: np.ndarray | None, label: str, values: dict | None = None):
        info = state["datasets"][name]["tokenizer"]
        teacher = info.get("teacher") or "caption"
        spec = specs[[s.name for s in specs].index(name)]
        if values is None:
            if not (Path(info.get("path", "")) / "config.json").exists():  # moved away: draw what is known
                return [message_tile(f"{label} · {name}", f"tokenizer not found:\n{info.get('path')}", "#eceff1")]
            tok = load_tokenizer(info["path"])  # a damaged one: one line, exit 2
            if tok.config.kind == "audio":  # one row holds every segment of the clip: (K, M, F) back
                values = {k: v[0] for k, v in tok.decode(tokens[None].astype(np.int64)).items()}
            else:  # a time axis: each step (a frame) is one sample of the tokenizer
                rows = tokens.reshape(max(spec.time_steps, 1), spec.per_step).astype(np.int64)
                values = tok.decode(rows)
            if not spec.time_steps:
                values = per_step(values, 0)
        if spec.time_steps:  # values with a leading time axis: tiles step by step
            tiles = []
            for i in range(spec.time_steps):
                tiles += tiles_of_values(teacher, per_step(values, i), f"{label} {i + 1}/{spec.time_steps}")
            return tiles
        return tiles_of_values(teacher, values, label)

    def tiles_of_values(teacher: str, values: dict, label: str):
        # which teacher class (its declared picture) and its fields' kinds, when the store is here; not its config:
        # predictions are drawn as they always were (class ids, no names)
        stored = labels.provenance(teacher) if labels is not None and teacher in labels.teachers() else {}
        known = {k: stored[k] for k in ("spec", "fields") if k in stored}
        info_sample = Sample(key, int(sample["__index__"]), 0, known, None)
        if teacher == "caption":  # the corpus alt-text: the whole text, wrapped
            tiles = [text_tile("caption", str(values.get("caption", "")))]
        else:
            tiles = teacher_tiles(teacher, values, info_sample)
        for t in tiles:
            t.title = f"{label} · {t.title}"
        return tiles

    tiles = []
    for i in source_ids:
        tiles += tiles_of(specs[i].name, sample[specs[i].name][0], "input")
    name = specs[target_id].name
    tiles += tiles_of(name, predicted, "predicted")
    info = state["datasets"][name]["tokenizer"]
    if labels is not None:
        i = labels.index_of(key)
        values = {f: labels.read(modality_name(info.get("teacher") or "", [f], "/"), i) for f in info["fields"]}
        values = {k: (v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v) for k, v in values.items()}
        tiles += tiles_of(name, None, "teacher", values)
    if truth is not None:
        tiles += tiles_of(name, truth[0], "teacher tokens")
    figure = panel(tiles, f"{key}: {', '.join(specs[i].name for i in source_ids)} → {name}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=DPI, facecolor="white")
