"""Vector tokenizer: a global embedding (D,) -> n_tokens tokens, and back.

    (b, D) --standardise--> MLP --> (b, n, d) --FSQ--> tokens (b, n) --> codes --> MLP --> (b, D)

Loss: MSE on standardised values + (1 - cosine), since embeddings are compared by cosine, + usage_weight ×
the quantizer's usage term (quantizer.py: 1 - the entropy of the batch's soft code distribution, normalised),
which spreads the encoder's outputs over the codebook: without it a vector tokenizer used 30-40% of its
codes on the demo (benchmarks/tokenizer_bench.py measures both). With the default 1000-code FSQ and 8
tokens a vector carries 8 · log2(1000) ≈ 80 bits.
Crops do not apply: a global embedding describes the whole view, so every crop gets the same tokens.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from omnimill.errors import UserError
from omnimill.tokenize.base import ModelTokenizer, TokenizerConfig
from omnimill.tokenize.quantizer import Quantizer

CODE_DIM = 32
USAGE_WEIGHT = 0.1  # training only, recorded in options.usage_weight (tokenizers trained before it: none, i.e. 0)


def mlp(d_in: int, hidden: int, d_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.LayerNorm(hidden), nn.Linear(hidden, hidden),
                         nn.GELU(), nn.Linear(hidden, d_out))


class VectorAutoencoder(nn.Module):
    def __init__(self, dim: int, n_tokens: int, hidden: int, vocab: int, quantizer: str):
        super().__init__()
        self.n_tokens = n_tokens
        self.encoder = mlp(dim, hidden, n_tokens * CODE_DIM)
        self.quantizer = Quantizer(CODE_DIM, vocab, quantizer)
        self.decoder = mlp(n_tokens * CODE_DIM, hidden, dim)

    def latents(self, x):
        """(b, n_tokens, CODE_DIM): what the quantizer rounds."""
        return self.encoder(x).view(len(x), self.n_tokens, CODE_DIM)

    def encode(self, x):
        return self.quantizer(self.latents(x))

    def decode_codes(self, codes):
        return self.decoder(codes.reshape(len(codes), -1))

    def forward(self, x):
        z = self.latents(x)
        codes, indices, aux = self.quantizer(z)
        return self.decode_codes(codes), indices, aux, z


class VectorTokenizer(ModelTokenizer):
    kind = "vector"

    def __init__(self, config: TokenizerConfig, model: VectorAutoencoder | None = None):
        super().__init__(config)
        o = config.options
        self.dim = int(o["sample_shape"][0])
        self.mean = torch.tensor(config.normalization["mean"])
        self.std = torch.tensor(config.normalization["std"])
        self.model = model or VectorAutoencoder(self.dim, o.get("n_tokens", 8), o.get("hidden", 512),
                                                o.get("vocab", 1024), o.get("quantizer", "fsq"))
        self.usage_weight = float(o.setdefault("usage_weight", USAGE_WEIGHT))
        config.vocab_size = self.model.quantizer.vocab_size
        config.tokens_per_sample = self.model.n_tokens

    @property
    def field(self) -> str:
        return self.config.fields[0]

    def target(self, values, crops=None) -> torch.Tensor:
        x = np.asarray(values[self.field], np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise UserError(f"tokenizer for {self.config.modality} expects vectors of shape ({self.dim},), "
                            f"got {tuple(x.shape[1:])}")
        return ((torch.from_numpy(x) - self.mean) / self.std).to(self.device)

    def loss(self, values, crops=None):
        target = self.target(values)
        pred, indices, aux, z = self.model(target)
        mean, std = self.mean.to(self.device), self.std.to(self.device)
        cosine = F.cosine_similarity(pred * std + mean, target * std + mean, dim=1)
        usage = self.model.quantizer.usage_loss(z) if self.usage_weight else 0.0
        return F.mse_loss(pred, target) + (1 - cosine).mean() + aux + self.usage_weight * usage, indices

    @torch.inference_mode()
    def encode(self, values, crops=None) -> np.ndarray:
        self.model.eval()
        _, indices, _ = self.model.encode(self.target(values))
        return indices.cpu().numpy().astype(np.int32)

    @torch.inference_mode()
    def decode(self, tokens) -> dict[str, np.ndarray]:
        self.model.eval()
        codes = self.model.quantizer.indices_to_codes(torch.from_numpy(np.asarray(tokens, np.int64)).to(self.device))
        return {self.field: (self.model.decode_codes(codes).cpu() * self.std + self.mean).numpy()}

    @torch.inference_mode()
    def round_trip(self, values, crops=None) -> tuple[np.ndarray, np.ndarray]:
        """(target, reconstruction), standardised: what eval compares."""
        self.model.eval()
        target = self.target(values)
        codes, _, _ = self.model.encode(target)
        return target.cpu().numpy(), self.model.decode_codes(codes).cpu().numpy()
