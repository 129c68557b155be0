"""Quantizers from vector-quantize-pytorch, behind one small interface.

FSQ (Mentzer et al., 2023, "Finite Scalar Quantization: VQ-VAE Made Simple") is the default: no
codebook to collapse. `fsq` takes the paper's recommended levels nearest to the asked vocabulary
(1024 -> [8,5,5,5] = 1000 codes); `fsq-exact` takes levels of 4 and 8 whose product is the vocabulary
exactly (a power of two: 4096 -> [8,8,4,4,4]), for consumers with a fixed embedding size such as 4M
(the paper's 4096 -> [7,5,5,5,5] = 4375 codes would emit ids past 4M's 4096 rows).
VQ (van den Oord et al., 2017) with EMA updates, k-means init and dead-code restart is the option for
those who want a learned codebook.

Shapes: z (b, n, d) -> codes (b, n, d), indices (b, n) in 0..vocab-1.

`usage_loss` (FSQ) is a training term that spreads a batch over the codebook: 1 - the entropy of the
batch's mean soft code distribution over log(codes). Without it a small tokenizer's encoder settles on a
few levels per dimension and leaves most codes unused.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# The FSQ paper's recommended levels per codebook size (Table 1): product of levels ≈ vocab.
FSQ_LEVELS = {
    2 ** 8: [8, 6, 5],
    2 ** 10: [8, 5, 5, 5],
    2 ** 12: [7, 5, 5, 5, 5],
    2 ** 14: [8, 8, 8, 6, 5],
    2 ** 16: [8, 8, 8, 5, 5, 5],
}
KINDS = ("fsq", "fsq-exact", "vq")
SOFT_TEMPERATURE = 0.25  # in squared level steps: the soft assignment behind usage_loss is nearly the rounding


def fsq_levels(vocab: int) -> list[int]:
    """Levels for the recommended size nearest to `vocab` in log scale (1024 -> [8,5,5,5] = 1000 codes)."""
    target = min(FSQ_LEVELS, key=lambda size: abs(math.log2(size) - math.log2(max(vocab, 2))))
    return FSQ_LEVELS[target]


def exact_fsq_levels(vocab: int) -> list[int]:
    """Levels of 8 and 4 whose product is `vocab` (a power of two, at least 4), in 5 dimensions where the size
    allows (the paper's choice for 2^12..2^14): 4096 -> [8,8,4,4,4], 8192 -> [8,8,8,4,4], 16384 -> [8,8,8,8,4]."""
    bits = vocab.bit_length() - 1
    if vocab < 4 or 2 ** bits != vocab:
        raise ValueError(f"fsq-exact needs a vocabulary that is a power of two, at least 4; not {vocab}")
    dims = min(max(5, -(-bits // 3)), bits // 2)  # each dimension holds 2 or 3 bits
    eights = bits - 2 * dims
    return [8] * eights + [4] * (dims - eights)


def levels_for(kind: str, vocab: int) -> list[int] | None:
    """The FSQ levels a quantizer of `kind` uses for `vocab` (None for VQ): what a config records."""
    if kind == "fsq":
        return fsq_levels(vocab)
    if kind == "fsq-exact":
        return exact_fsq_levels(vocab)
    return None


class Quantizer(nn.Module):
    def __init__(self, dim: int, vocab: int, kind: str = "fsq"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"quantizer must be {', '.join(KINDS)}, not {kind!r}")
        self.kind = kind
        if kind == "vq":
            from vector_quantize_pytorch import VectorQuantize

            self.q = VectorQuantize(dim=dim, codebook_size=vocab, decay=0.99, kmeans_init=True,
                                    threshold_ema_dead_code=2, commitment_weight=0.25)
            self.vocab_size = vocab
        else:
            from vector_quantize_pytorch import FSQ

            self.levels = levels_for(kind, vocab)
            self.q = FSQ(levels=self.levels, dim=dim)
            self.vocab_size = math.prod(self.levels)

    @property
    def fsq(self) -> bool:
        return self.kind != "vq"

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (codes, indices, auxiliary loss)."""
        if self.fsq:
            codes, indices = self.q(z)
            return codes, indices, z.new_zeros(())
        codes, indices, commit = self.q(z)
        return codes, indices, commit.sum()

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        if self.fsq:
            return self.q.indices_to_codes(indices)
        return self.q.get_output_from_indices(indices)

    def usage_loss(self, z: torch.Tensor) -> torch.Tensor:
        """1 - H(mean soft code distribution of the batch) / log(codes): 0 when z spreads over every code
        evenly. Each FSQ dimension's value is softly assigned to its levels; a code's probability is the
        product over dimensions. VQ restarts dead codes instead: 0."""
        if not self.fsq:
            return z.new_zeros(())
        h = self.q.project_in(z.reshape(-1, z.shape[-1]).float())
        levels = self.q._levels.to(h.dtype)
        half = (levels - 1) * (1 + 1e-3) / 2  # FSQ's own bound: round(bounded) is the level
        offset = (levels % 2 == 0).to(h.dtype) * 0.5
        bounded = torch.tanh(h + torch.atanh(offset / half)) * half - offset
        joint = None
        for d, n in enumerate(self.levels):
            steps = torch.arange(n, dtype=h.dtype, device=h.device) - n // 2
            p = torch.softmax(-(bounded[:, d:d + 1] - steps) ** 2 / SOFT_TEMPERATURE, -1)
            joint = p if joint is None else (joint[:, :, None] * p[:, None, :]).reshape(len(p), -1)
        mean = joint.mean(0)
        entropy = -(mean * (mean + 1e-12).log()).sum()
        return 1 - entropy / math.log(mean.numel())
