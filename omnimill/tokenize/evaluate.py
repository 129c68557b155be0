"""`omnimill tokenizer eval`: how good is a tokenizer, on samples it never trained on.

Writes metrics.json and pictures into the tokenizer directory:
  reconstructions.png   originals next to decode(encode(x)) for a few held-out samples
  usage.png             how often each code is used (sorted), over held-out and training samples
  curve.png             the training curve (written by train)

Metrics by what the values are (each beside a trivial baseline, so a number means something):
  image / continuous    PSNR over the held-out data range; baseline: predict the training mean
  unit (normals)        mean angular error and cosine; baseline: the mean normal
  binary (edges)        IoU and F1 of positives; baseline: every pixel positive
  classes               pixel accuracy and mIoU; baseline: the most frequent class
  vector                cosine similarity; baseline: the training mean vector
  sequence              exact round trip rate against the declared quantization
  audio (log-mel)       on held-out clips with audio: log-mel L1 (natural-log units) and spectral convergence
                        (||A - Â||_F / ||A||_F of each segment's mel amplitude A = exp(log-mel / 2), averaged);
                        baseline: the mean spectrogram (M, F) of the training split's clips with audio.
                        reconstructions.png shows spectrograms (original | decoded); audio_<i>_original.wav
                        and audio_<i>_decoded.wav let a person hear a few clips (griffin_lim.py: the stored
                        log-mel and its reconstruction made audible the same way, segments 0.25 s apart)
Codebook usage: the share of codes used at least once when encoding up to `usage_samples` samples
(held-out and training, every one through crop 0 and one random crop).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from omnimill.corpus.media import AUDIO_RATE
from omnimill.errors import UserError
from omnimill.files import write_atomic
from omnimill.tokenize.base import load_tokenizer
from omnimill.tokenize.data import check_source, open_field, split
from omnimill.tokenize.plots import plot_usage


def evaluate_tokenizer(directory: str | Path, store: str, max_samples: int = 256, usage_samples: int = 2000,
                       batch_size: int = 32, listen: int = 4) -> dict:
    """metrics.json and the pictures; `listen`: held-out clips an audio tokenizer's eval writes as WAV files."""
    directory = Path(directory)
    tokenizer = load_tokenizer(directory)
    config = tokenizer.config
    if config.kind == "mask":  # instances, not samples: its own metrics (mask IoU against the filled box)
        from omnimill.tokenize.mask import evaluate_mask_tokenizer

        return evaluate_mask_tokenizer(directory, store, max_samples=max_samples, usage_samples=usage_samples)
    source = open_field(store, config.modality)
    check_source(config, source)
    train_idx, heldout_idx = split(source, config.options.get("holdout", 0.1), config.options.get("seed", 0))
    if len(heldout_idx) == 0:
        raise UserError(f"{store} has no held-out samples for {config.modality}; evaluate on a larger store")
    heldout_idx = heldout_idx[:max_samples]
    values = source.read(heldout_idx)
    view_size = source.store.view_size

    metrics: dict = {"modality": config.modality, "kind": config.kind, "store": source.store.uri,
                     "heldout_samples": len(heldout_idx), "vocab_size": tokenizer.vocab_size,
                     "tokens_per_sample": tokenizer.tokens_per_sample}
    if config.kind == "sequence":
        metrics.update(_sequence_metrics(tokenizer, values, view_size))
    elif config.kind == "audio":
        metrics.update(_audio_report(tokenizer, source, values, heldout_idx, train_idx, directory, batch_size, listen))
    else:
        pairs = _reconstruct(tokenizer, values, batch_size)
        metrics.update(quality(tokenizer, *pairs))
        _plot_reconstructions(tokenizer, *pairs, directory / "reconstructions.png")
    usage_idx = np.concatenate([heldout_idx, train_idx[:max(0, usage_samples - len(heldout_idx))]])
    counts = code_counts(tokenizer, source, np.sort(usage_idx), view_size, batch_size)
    metrics["codebook_usage"] = float((counts > 0).mean())
    metrics["usage_samples"] = int(len(usage_idx))
    p = counts / max(counts.sum(), 1)
    metrics["perplexity"] = float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))
    plot_usage(counts, directory / "usage.png", metrics)
    write_atomic(directory / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def _reconstruct(tokenizer, values: dict, batch_size: int):
    """(target, reconstruction) in the tokenizer's normalised space, whole views (crop 0)."""
    n = len(next(iter(values.values())))
    pairs = [tokenizer.round_trip({k: v[i:i + batch_size] for k, v in values.items()}) for i in range(0, n, batch_size)]
    return np.concatenate([t for t, _ in pairs]), np.concatenate([r for _, r in pairs])


def quality(tokenizer, target: np.ndarray, recon: np.ndarray) -> dict:
    """Metrics in the model's target space (normalised as the tokenizer normalises), with baselines."""
    mode = tokenizer.config.normalization.get("mode", "continuous") if tokenizer.kind == "spatial" else "vector"
    if mode in ("image", "continuous"):
        data_range = float(target.max() - target.min()) or 1.0
        mse = float(((recon - target) ** 2).mean())
        baseline = float((target ** 2).mean())  # the training mean is 0 after standardising
        return {"psnr": _psnr(mse, data_range), "baseline_psnr_mean": _psnr(baseline, data_range), "mse": mse}
    if mode == "unit":
        cos = np.clip((recon * target).sum(1) / (np.linalg.norm(recon, axis=1) * np.linalg.norm(target, axis=1)
                                                 + 1e-8), -1, 1)
        mean = target.mean((0, 2, 3), keepdims=True)
        base = (mean * target).sum(1) / (np.linalg.norm(mean, axis=1) * np.linalg.norm(target, axis=1) + 1e-8)
        return {"cosine": float(cos.mean()), "angular_error_deg": float(np.degrees(np.arccos(cos)).mean()),
                "baseline_cosine_mean_normal": float(base.mean())}
    if mode == "binary":
        t, r = target > 0.5, recon > 0.5
        return {"iou": _iou(t, r), "f1": _f1(t, r), "baseline_iou_all_positive": _iou(t, np.ones_like(t))}
    if mode == "classes":
        t, r = target.astype(int), recon.astype(int)  # (b, h, w) ids
        majority = np.bincount(t.ravel()).argmax()
        return {"pixel_accuracy": float((t == r).mean()), "miou": _miou(t, r),
                "baseline_accuracy_majority": float((t == majority).mean())}
    cos = (recon * target).sum(1) / (np.linalg.norm(recon, axis=1) * np.linalg.norm(target, axis=1) + 1e-8)
    mean = tokenizer.mean.numpy()
    raw_t, raw_r = target * tokenizer.std.numpy() + mean, recon * tokenizer.std.numpy() + mean
    cos_raw = (raw_r * raw_t).sum(1) / (np.linalg.norm(raw_r, axis=1) * np.linalg.norm(raw_t, axis=1) + 1e-8)
    base = (mean * raw_t).sum(1) / (np.linalg.norm(mean) * np.linalg.norm(raw_t, axis=1) + 1e-8)
    return {"cosine": float(cos_raw.mean()), "cosine_standardised": float(cos.mean()),
            "baseline_cosine_mean_vector": float(base.mean())}


def audio_quality(target: np.ndarray, recon: np.ndarray, mean: np.ndarray) -> dict:
    """Log-mel L1 and spectral convergence of (N, K, M, F) reconstructions, and of the mean spectrogram (M, F)."""
    def convergence(guess):
        a, b = np.exp(target / 2), np.exp(guess / 2)
        return float((np.linalg.norm(a - b, axis=(2, 3)) / np.linalg.norm(a, axis=(2, 3))).mean())

    baseline = np.broadcast_to(mean, target.shape)
    return {"log_mel_l1": float(np.abs(recon - target).mean()),
            "baseline_log_mel_l1_mean": float(np.abs(baseline - target).mean()),
            "spectral_convergence": convergence(recon), "baseline_spectral_convergence_mean": convergence(baseline)}


def _audio_report(tokenizer, source, values: dict, heldout_idx: np.ndarray, train_idx: np.ndarray, directory: Path,
                  batch_size: int, listen: int = 4) -> dict:
    """Metrics on held-out clips with audio, their spectrograms, and a few of them as WAV files."""
    from omnimill.tokenize.griffin_lim import mel_to_audio, write_wav
    from omnimill.tokenize.plots import plot_spectrograms

    heard = _has_audio(source, heldout_idx)
    if not heard.any():
        raise UserError(f"no held-out clip of {source.store.uri} has audio; evaluate on a store with more clips")
    target, recon = _reconstruct(tokenizer, {k: v[heard] for k, v in values.items()}, batch_size)
    out = {"heldout_with_audio": int(heard.sum())}
    out.update(audio_quality(target, recon, _mean_spectrogram(source, train_idx)))
    hop = tokenizer.config.options.get("hop_samples")
    seconds = hop / AUDIO_RATE if hop else None
    plot_spectrograms(target, recon, directory / "reconstructions.png", seconds_per_frame=seconds,
                      title=f"{tokenizer.config.modality}: held-out clips, log-mel "
                            f"(L1 {out['log_mel_l1']:.2f}, mean spectrogram {out['baseline_log_mel_l1_mean']:.2f})")
    out["wav_files"] = []
    if hop:  # the log_mel teacher recorded how it made the spectrogram; without it nothing can be heard
        gap = np.zeros(4000, np.float32)  # 0.25 s between segments: they are separate pieces of the clip
        keys = source.store.keys()[heldout_idx[heard]]
        n = min(listen, len(target))
        waves = mel_to_audio(np.stack([target[:n], recon[:n]]), hop, tokenizer.config.options.get("window") or 400)
        for i in range(n):  # waves (2, n, K, L): every segment heard in one Griffin-Lim batch
            for name, pieces in (("original", waves[0, i]), ("decoded", waves[1, i])):
                path = directory / f"audio_{i}_{name}.wav"
                write_wav(path, np.concatenate([p for piece in pieces for p in (piece, gap)][:-1]))
                out["wav_files"].append({"key": str(keys[i]), "file": path.name})
    return out


def _has_audio(source, rows: np.ndarray) -> np.ndarray:
    """(len(rows),) bool: the log_mel teacher's has_audio where it stored one, else every clip."""
    path = source.path("has_audio")
    if not source.store.has(path):
        return np.ones(len(rows), bool)
    return np.asarray(source.store.read(path, np.asarray(rows, np.int64)), bool)


def _mean_spectrogram(source, train_idx: np.ndarray, limit: int = 2000, chunk: int = 256) -> np.ndarray:
    """The baseline: mean log-mel (M, F) over every segment of up to `limit` training clips with audio."""
    rows = train_idx[_has_audio(source, train_idx)][:limit]
    if not len(rows):
        rows = train_idx[:limit]
    total, count = 0.0, 0
    for i in range(0, len(rows), chunk):
        x = source.read(rows[i:i + chunk])[source.fields[0]].astype(np.float64)
        total, count = total + x.sum((0, 1)), count + x.shape[0] * x.shape[1]
    return (total / count).astype(np.float32)


def _psnr(mse: float, data_range: float) -> float:
    return float(10 * np.log10(data_range ** 2 / max(mse, 1e-12)))


def _iou(t, r) -> float:
    union = (t | r).sum()
    return float((t & r).sum() / union) if union else 1.0


def _f1(t, r) -> float:
    denom = t.sum() + r.sum()
    return float(2 * (t & r).sum() / denom) if denom else 1.0


def _miou(t, r) -> float:
    classes = np.unique(t)
    return float(np.mean([_iou(t == c, r == c) for c in classes]))


def _sequence_metrics(tokenizer, values: dict, view_size: int) -> dict:
    from omnimill.tokenize.crops import make_crops

    n = len(next(iter(values.values())))
    crops = make_crops([str(i) for i in range(n)], view_size, 2)[:, 1]  # a random crop each: exercises geometry
    exact = []
    for crop_set in (None, crops):
        expected = tokenizer.quantize(values, crop_set)
        decoded = tokenizer.decode(tokenizer.encode(values, crop_set))
        for i in range(n):
            exact.append(all(_same(expected[f][i], decoded[f][i]) for f in expected))
    truncated = tokenizer.truncated(tokenizer.encode(values, None))
    return {"exact_round_trip": float(np.mean(exact)), "truncated": float(np.mean(truncated))}


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "fc":
        return a.shape == b.shape and np.allclose(a, b, atol=1e-6)
    return a.shape == b.shape and bool((a == b).all())


def code_counts(tokenizer, source, indices: np.ndarray, view_size: int, batch_size: int) -> np.ndarray:
    from omnimill.tokenize.crops import make_crops

    counts = np.zeros(tokenizer.vocab_size, np.int64)
    for i in range(0, len(indices), batch_size * 4):
        rows = indices[i:i + batch_size * 4]
        values = source.read(rows)
        crops = make_crops(source.sample_keys(rows), view_size, 2)  # a clip's frames share its crop
        for c in (0, 1):
            tokens = tokenizer.encode(values, crops[:, c]).ravel()
            tokens = tokens[(tokens >= 0) & (tokens < tokenizer.vocab_size)]
            counts += np.bincount(tokens, minlength=tokenizer.vocab_size)
    return counts


def _plot_reconstructions(tokenizer, target: np.ndarray, recon: np.ndarray, path: Path, n: int = 6) -> None:
    from matplotlib.figure import Figure

    n = min(n, len(target))
    fig = Figure(figsize=(2 * n, 4.3), dpi=100)
    for i in range(n):
        basis = None
        for row, (data, label) in enumerate(((target, "original"), (recon, "decode(encode(x))"))):
            ax = fig.add_subplot(2, n, row * n + i + 1)
            picture, basis = _picture(tokenizer, data[i], basis)
            ax.imshow(picture, **_cmap(tokenizer))
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label)
    fig.suptitle(f"{tokenizer.config.modality}: held-out samples, whole view")
    fig.tight_layout()
    fig.savefig(path)


def _picture(tokenizer, x: np.ndarray, basis=None):
    """One sample in target space -> (something imshow draws, PCA basis to reuse for its reconstruction)."""
    if tokenizer.kind == "vector":
        side = int(np.ceil(np.sqrt(x.size)))
        return np.pad(x, (0, side * side - x.size)).reshape(side, side), None
    if x.ndim == 2:  # class ids
        return x, None
    mode = tokenizer.norm["mode"]
    if mode == "image":
        mean = np.array(tokenizer.norm["mean"])[:, None, None]
        std = np.array(tokenizer.norm["std"])[:, None, None]
        return np.clip((x * std + mean).transpose(1, 2, 0), 0, 1), None
    if mode == "unit":
        return np.clip((x.transpose(1, 2, 0) + 1) / 2, 0, 1), None
    if x.shape[0] == 1:
        return x[0], None
    flat = x.reshape(x.shape[0], -1).T  # (h w) c: features, shown as their first 3 principal components
    if basis is None:
        centre = flat.mean(0)
        _, _, vt = np.linalg.svd(flat - centre, full_matrices=False)
        projected = (flat - centre) @ vt[:3].T
        basis = (centre, vt[:3], projected.min(0), np.ptp(projected, 0) + 1e-8)
    centre, components, low, span = basis
    rgb = np.clip(((flat - centre) @ components.T - low) / span, 0, 1)
    return rgb.reshape(x.shape[1], x.shape[2], 3), basis


def _cmap(tokenizer) -> dict:
    if tokenizer.kind == "spatial" and tokenizer.norm["mode"] == "classes":
        return {"cmap": "tab20", "interpolation": "nearest"}
    if tokenizer.kind == "spatial" and tokenizer.norm["mode"] == "binary":
        return {"cmap": "gray", "interpolation": "nearest"}
    return {"cmap": "viridis"}
