"""Spatial tokenizer: a dense map (H, W[, C]) -> a g × g grid of tokens, and back.

    values --crop, resize to input_size--> (b, c, s, s) --encoder--> (b, d, g, g) --FSQ--> tokens (b, g·g)
    tokens --codes--> (b, d, g, g) --decoder--> (b, c, s, s) --undo normalisation--> values

Encoder and decoder are small convolutional stacks (a VQGAN without the GAN): each of the
n_down = log2(s / g) stages halves the side (256 px / 16 tokens = 16 = 2⁴ -> 4 stages). A feature
grid already at g × g (DINOv2 patches) uses 0 stages: a per-token MLP with 3 × 3 context.
Class maps enter through an embedding and leave as logits (cross-entropy); see values.py.
A clip's per-frame field (N, T, H, W[, C]) is tokenized frame by frame, as images (tokenize/data.py): T x g x g
tokens a clip, time-major, every frame through the clip's one crop; training sees each frame as a sample.
"""

from __future__ import annotations

import math
import numpy as np
import torch
from torch import nn

from omnimill.tokenize import values as V
from omnimill.tokenize.base import ModelTokenizer, TokenizerConfig
from omnimill.tokenize.crops import crop_dense
from omnimill.tokenize.quantizer import Quantizer

CODE_DIM = 32  # encoder output channels before FSQ projects them to len(levels) dims


def block(c: int, conv: type = nn.Conv2d) -> nn.Module:
    return nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), conv(c, c, 3, padding=1))


class Residual(nn.Module):
    """Two norm-activation-conv blocks and a skip; `conv` nn.Conv2d over a grid, nn.Conv1d over time (audio)."""

    def __init__(self, c: int, conv: type = nn.Conv2d):
        super().__init__()
        self.body = nn.Sequential(block(c, conv), block(c, conv))

    def forward(self, x):
        return x + self.body(x)


class ConvAutoencoder(nn.Module):
    def __init__(self, c_in: int, c_out: int, n_down: int, width: int, vocab: int, quantizer: str,
                 n_classes: int = 0):
        super().__init__()
        self.embed = nn.Embedding(n_classes, 16) if n_classes else None
        c_first = 16 if n_classes else c_in
        widths = [min(width * 2 ** i, 4 * width) for i in range(n_down + 1)]
        enc: list[nn.Module] = [nn.Conv2d(c_first, widths[0], 3, padding=1)]
        for i in range(n_down):
            enc += [Residual(widths[i]), nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1)]
        enc += [Residual(widths[-1]), nn.GroupNorm(8, widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], CODE_DIM, 1)]
        self.encoder = nn.Sequential(*enc)
        self.quantizer = Quantizer(CODE_DIM, vocab, quantizer)
        dec: list[nn.Module] = [nn.Conv2d(CODE_DIM, widths[-1], 3, padding=1), Residual(widths[-1])]
        for i in reversed(range(n_down)):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(widths[i + 1], widths[i], 3, padding=1),
                    Residual(widths[i])]
        dec += [nn.GroupNorm(8, widths[0]), nn.SiLU(), nn.Conv2d(widths[0], c_out, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor):
        if self.embed is not None:
            x = self.embed(x).permute(0, 3, 1, 2)  # b h w e -> b e h w
        z = self.encoder(x)
        b, d, g, _ = z.shape
        codes, indices, aux = self.quantizer(z.flatten(2).transpose(1, 2))  # b (g g) d
        return codes, indices, aux, g

    def decode_codes(self, codes: torch.Tensor, g: int) -> torch.Tensor:
        return self.decoder(codes.transpose(1, 2).reshape(codes.shape[0], -1, g, g))

    def forward(self, x):
        codes, indices, aux, g = self.encode(x)
        return self.decode_codes(codes, g), indices, aux


class SpatialTokenizer(ModelTokenizer):
    kind = "spatial"

    def __init__(self, config: TokenizerConfig, model: ConvAutoencoder | None = None):
        super().__init__(config)
        o = config.options
        self.norm = config.normalization
        self.view_size, self.input_size, self.grid = o["view_size"], o["input_size"], o["grid"]
        n_down = int(round(math.log2(self.input_size / self.grid)))
        if 2 ** n_down * self.grid != self.input_size:
            raise ValueError(f"input_size {self.input_size} / grid {self.grid} must be a power of 2")
        shape = tuple(o["sample_shape"])
        self.model = model or ConvAutoencoder(V.channels_in(self.norm, shape), V.channels_out(self.norm, shape),
                                              n_down, o.get("width", 64), o.get("vocab", 1024),
                                              o.get("quantizer", "fsq"), self.norm.get("n_classes", 0))
        config.vocab_size = self.model.quantizer.vocab_size
        config.tokens_per_sample = self.grid * self.grid

    @property
    def field(self) -> str:
        return self.config.fields[0]

    def target(self, values: dict[str, np.ndarray], crops: np.ndarray | None) -> torch.Tensor:
        """Crop, resize to input_size and normalise: the model's input and reconstruction target."""
        x = values[self.field]
        expected = tuple(self.config.options["sample_shape"])
        if tuple(x.shape[1:]) != expected:
            from omnimill.errors import UserError

            raise UserError(f"tokenizer for {self.config.modality} expects samples of shape {expected}, "
                            f"got {tuple(x.shape[1:])}")
        if crops is None:
            crops = np.tile(np.array([0, 0, self.view_size, self.view_size, 0], np.int32), (len(x), 1))
        mode = {"classes": "nearest", "binary": "max"}.get(self.norm["mode"], "bilinear")
        cut = crop_dense(x.astype(np.float32), crops, self.view_size, self.input_size, mode)
        if self.norm["mode"] == "unit" and np.asarray(crops)[:, 4].any():
            cut[np.asarray(crops)[:, 4] == 1, ..., 0] *= -1  # mirroring the image mirrors the normals' x
        return V.to_target(cut, self.norm).to(self.device)

    def loss(self, values, crops) -> tuple[torch.Tensor, torch.Tensor]:
        target = self.target(values, crops)
        pred, indices, aux = self.model(target)
        return V.loss(pred, target, self.norm) + aux, indices

    @torch.inference_mode()
    def encode(self, values, crops=None) -> np.ndarray:
        self.model.eval()
        _, indices, _, _ = self.model.encode(self.target(values, crops))
        return indices.cpu().numpy().astype(np.int32)

    @torch.inference_mode()
    def decode(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        self.model.eval()
        codes = self.model.quantizer.indices_to_codes(torch.from_numpy(np.asarray(tokens, np.int64)).to(self.device))
        return {self.field: V.from_output(self.model.decode_codes(codes, self.grid).cpu(), self.norm)}

    @torch.inference_mode()
    def round_trip(self, values, crops=None) -> tuple[np.ndarray, np.ndarray]:
        """(target, reconstruction) in the model's normalised space at input_size: what eval compares."""
        self.model.eval()
        target = self.target(values, crops)
        codes, _, _, g = self.model.encode(target)
        pred = self.model.decode_codes(codes, g)
        mode = self.norm["mode"]
        target, pred = target.cpu(), pred.cpu()
        if mode == "classes":
            return target.numpy(), pred.argmax(1).numpy()
        if mode == "binary":
            return target.numpy(), (pred > 0).float().numpy()
        if mode == "unit":
            pred = torch.nn.functional.normalize(pred, dim=1)
        return target.numpy(), pred.numpy()
