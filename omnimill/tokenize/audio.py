"""Audio tokenizer: a clip's K log-mel segments (K, M, F) -> K x l tokens, time-major, and back.

Each audio segment is tokenized on its own (the `log_mel/mel` field: K segments of M mel bands x F frames):

    (M, F) --standardise per band--> conv encoder over time, mel bands as channels, n = log2(time_stride)
    stages that halve the time axis --> (steps, tokens_per_step, d) --FSQ--> l = steps x tokens_per_step tokens
    tokens --codes--> decoder (the mirror: nearest upsampling + convs) --> (M, F) standardised --> log-mel

steps = ceil(F / time_stride); a segment whose F is no multiple of time_stride is padded with the band means
and cut back after decoding. Defaults: time_stride 8 (a step is 80 ms at the 10 ms hop) and 8 tokens per step
-> 25 x 8 = 200 tokens per 2 s segment, 10 bits each (1000 FSQ codes): 1 kbit/s.

A 1-D time sequence rather than a (M/f) x (F/f) grid: the mel bands are the channels of 1-D convolutions (as
speech front ends treat them), which costs a fraction of 2-D convolutions over the same spectrogram, and every
token of a step describes the same 80 ms, so the token order is time order at both levels:

    tokens of a clip (N, K x l): segment 0's l tokens first; within a segment step after step, each step's
    tokens_per_step tokens together. Token i belongs to segment i // l: the token store's
    `time: {"steps": K, "of": "audio_segments"}` (`time_layout`), the layout the trainer reads.

Crops do not apply: sound has no spatial crop, so every crop of a clip gets the same audio tokens.
Loss: MSE + L1 on the standardised log-mel, + usage_weight x the quantizer's usage term (quantizer.py), which
spreads the encoder's outputs over the codebook as it does for the vector tokenizer.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from omnimill.errors import UserError
from omnimill.tokenize.base import ModelTokenizer, TokenizerConfig
from omnimill.tokenize.quantizer import Quantizer, levels_for
from omnimill.tokenize.spatial import Residual

CODE_DIM = 32  # encoder channels per token before FSQ projects them to len(levels) dims
TIME_STRIDE = 8  # log-mel frames per time step: 80 ms at a 10 ms hop
TOKENS_PER_STEP = 8
USAGE_WEIGHT = 0.1  # as the vector tokenizer's: without it a small encoder leaves most codes unused


class AudioAutoencoder(nn.Module):
    """(b, M, F') standardised log-mel, F' a multiple of time_stride <-> (b, steps x tokens_per_step) tokens."""

    def __init__(self, n_mels: int, time_stride: int, tokens_per_step: int, width: int, vocab: int, quantizer: str):
        super().__init__()
        n_down = int(round(math.log2(time_stride)))
        if 2 ** n_down != time_stride:
            raise UserError(f"audio tokenizer: time_stride must be a power of 2, not {time_stride}")
        if width < 8 or width % 8:
            raise UserError(f"audio tokenizer: width must be a multiple of 8 (group norm), not {width}")
        self.per_step = tokens_per_step
        widths = [min(width * 2 ** i, 4 * width) for i in range(n_down + 1)]
        enc: list[nn.Module] = [nn.Conv1d(n_mels, widths[0], 3, padding=1)]
        for i in range(n_down):
            enc += [Residual(widths[i], nn.Conv1d), nn.Conv1d(widths[i], widths[i + 1], 4, stride=2, padding=1)]
        enc += [Residual(widths[-1], nn.Conv1d), nn.GroupNorm(8, widths[-1]), nn.SiLU(),
                nn.Conv1d(widths[-1], tokens_per_step * CODE_DIM, 1)]
        self.encoder = nn.Sequential(*enc)
        self.quantizer = Quantizer(CODE_DIM, vocab, quantizer)
        dec: list[nn.Module] = [nn.Conv1d(tokens_per_step * CODE_DIM, widths[-1], 3, padding=1),
                                Residual(widths[-1], nn.Conv1d)]
        for i in reversed(range(n_down)):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv1d(widths[i + 1], widths[i], 3, padding=1),
                    Residual(widths[i], nn.Conv1d)]
        dec += [nn.GroupNorm(8, widths[0]), nn.SiLU(), nn.Conv1d(widths[0], n_mels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """(b, steps x tokens_per_step, CODE_DIM): what the quantizer rounds, step after step."""
        z = self.encoder(x)  # (b, tokens_per_step x CODE_DIM, steps)
        b, _, steps = z.shape
        return z.view(b, self.per_step, CODE_DIM, steps).permute(0, 3, 1, 2).reshape(b, steps * self.per_step, CODE_DIM)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        b, n, _ = codes.shape
        steps = n // self.per_step
        z = codes.reshape(b, steps, self.per_step, CODE_DIM).permute(0, 2, 3, 1).reshape(b, -1, steps)
        return self.decoder(z)

    def forward(self, x):
        z = self.latents(x)
        codes, indices, aux = self.quantizer(z)
        return self.decode_codes(codes), indices, aux, z


def new_audio_tokenizer(config: TokenizerConfig, spec: dict, provenance: dict, sample: np.ndarray, width: int,
                        vocab: int, quantizer: str, time_stride: int | None, tokens_per_step: int | None
                        ) -> "AudioTokenizer":
    """An untrained tokenizer for a spectrogram field of per-sample shape (K, M, F), standardised per mel band
    with the statistics of `sample` (the training split's values, (n, K, M, F))."""
    shape = tuple(spec["shape"])
    if len(shape) != 3 or spec["dtype"] == "str":
        raise UserError(f"an audio tokenizer reads log-mel segments (K, M, F), as `log_mel/mel`; this field has "
                        f"per-sample shape {shape} ({spec['dtype']})")
    x = sample.astype(np.float32).transpose(2, 0, 1, 3).reshape(shape[1], -1)  # bands x everything else
    config.normalization = {"mode": "log_mel", "mean": x.mean(1).tolist(), "std": np.maximum(x.std(1), 1e-3).tolist()}
    teacher = provenance.get("config", {})
    config.options.update(sample_shape=list(shape), time_stride=time_stride or TIME_STRIDE,
                          tokens_per_step=tokens_per_step or TOKENS_PER_STEP, width=width, vocab=vocab,
                          quantizer=quantizer, levels=levels_for(quantizer, vocab), usage_weight=USAGE_WEIGHT,
                          # how the log-mel was made: what Griffin-Lim needs to make it heard (tokenizer eval)
                          hop_samples=teacher.get("hop_samples"), window=teacher.get("window"))
    return AudioTokenizer(config)


class AudioTokenizer(ModelTokenizer):
    kind = "audio"

    def __init__(self, config: TokenizerConfig, model: AudioAutoencoder | None = None):
        super().__init__(config)
        o = config.options
        self.segments, self.n_mels, self.frames = (int(s) for s in o["sample_shape"])
        self.time_stride = int(o.get("time_stride", TIME_STRIDE))
        self.steps = -(-self.frames // self.time_stride)
        self.mean = torch.tensor(config.normalization["mean"], dtype=torch.float32)[:, None]  # (M, 1)
        self.std = torch.tensor(config.normalization["std"], dtype=torch.float32)[:, None]
        self.model = model or AudioAutoencoder(self.n_mels, self.time_stride, int(o.get("tokens_per_step", TOKENS_PER_STEP)),
                                               o.get("width", 64), o.get("vocab", 1024), o.get("quantizer", "fsq"))
        self.usage_weight = float(o.get("usage_weight", USAGE_WEIGHT))
        config.vocab_size = self.model.quantizer.vocab_size
        config.tokens_per_sample = self.segments * self.tokens_per_segment

    @property
    def field(self) -> str:
        return self.config.fields[0]

    @property
    def tokens_per_segment(self) -> int:
        return self.steps * self.model.per_step

    def time_layout(self, field_shape=None) -> dict:
        """The K segments are the time steps of a clip's tokens (token i: segment i // tokens_per_segment)."""
        return {"steps": self.segments, "of": "audio_segments"}

    def target(self, values: dict[str, np.ndarray]) -> torch.Tensor:
        """(N, K, M, F) log-mel -> (N x K, M, steps x time_stride) standardised, padded with band means (0)."""
        x = np.asarray(values[self.field], np.float32)
        expected = (self.segments, self.n_mels, self.frames)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise UserError(f"tokenizer for {self.config.modality} expects log-mel segments of shape {expected}, "
                            f"got {tuple(x.shape[1:])}")
        t = (torch.from_numpy(x).reshape(-1, self.n_mels, self.frames) - self.mean) / self.std
        return F.pad(t, (0, self.steps * self.time_stride - self.frames)).to(self.device)

    def to_log_mel(self, out: torch.Tensor, n: int) -> np.ndarray:
        """Decoder output (N x K, M, F') -> (N, K, M, F) log-mel in the field's units."""
        out = out[..., :self.frames].float().cpu() * self.std + self.mean
        return out.reshape(n, self.segments, self.n_mels, self.frames).numpy()

    def loss(self, values, crops=None):
        target = self.target(values)
        pred, indices, aux, z = self.model(target)
        pred, goal = pred[..., :self.frames], target[..., :self.frames]  # padding is no sound to learn
        usage = self.model.quantizer.usage_loss(z) if self.usage_weight else 0.0
        return F.mse_loss(pred, goal) + F.l1_loss(pred, goal) + aux + self.usage_weight * usage, indices

    @torch.inference_mode()
    def encode(self, values, crops=None) -> np.ndarray:
        """(N, K x l) int32, segment after segment; crops are ignored (see the module doc)."""
        self.model.eval()
        n = len(values[self.field])
        _, indices, _ = self.model.quantizer(self.model.latents(self.target(values)))
        return indices.reshape(n, -1).cpu().numpy().astype(np.int32)

    @torch.inference_mode()
    def decode(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        self.model.eval()
        tokens = np.asarray(tokens, np.int64)
        n = len(tokens)
        segments = torch.from_numpy(tokens.reshape(n * self.segments, self.tokens_per_segment)).to(self.device)
        codes = self.model.quantizer.indices_to_codes(segments)
        return {self.field: self.to_log_mel(self.model.decode_codes(codes), n)}

    @torch.inference_mode()
    def round_trip(self, values, crops=None) -> tuple[np.ndarray, np.ndarray]:
        """(log-mel, decode(encode(log-mel))), both (N, K, M, F) in the field's units: what eval compares."""
        self.model.eval()
        x = np.asarray(values[self.field], np.float32)
        codes, _, _ = self.model.quantizer(self.model.latents(self.target(values)))
        return x, self.to_log_mel(self.model.decode_codes(codes), len(x))
