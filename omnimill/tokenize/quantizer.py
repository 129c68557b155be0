"""Quantizers from vector-quantize-pytorch, behind one small interface.

FSQ (Mentzer et al., 2023, "Finite Scalar Quantization: VQ-VAE Made Simple") is the default: no
codebook to collapse, near-full code usage. VQ (van den Oord et al., 2017) with EMA updates, k-means
init and dead-code restart is the option for those who want a learned codebook.

Shapes: z (b, n, d) -> codes (b, n, d), indices (b, n) in 0..vocab-1.
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


def fsq_levels(vocab: int) -> list[int]:
    """Levels for the recommended size nearest to `vocab` in log scale (1024 -> [8,5,5,5] = 1000 codes)."""
    target = min(FSQ_LEVELS, key=lambda size: abs(math.log2(size) - math.log2(max(vocab, 2))))
    return FSQ_LEVELS[target]


class Quantizer(nn.Module):
    def __init__(self, dim: int, vocab: int, kind: str = "fsq"):
        super().__init__()
        self.kind = kind
        if kind == "fsq":
            from vector_quantize_pytorch import FSQ

            self.levels = fsq_levels(vocab)
            self.q = FSQ(levels=self.levels, dim=dim)
            self.vocab_size = math.prod(self.levels)
        elif kind == "vq":
            from vector_quantize_pytorch import VectorQuantize

            self.q = VectorQuantize(dim=dim, codebook_size=vocab, decay=0.99, kmeans_init=True,
                                    threshold_ema_dead_code=2, commitment_weight=0.25)
            self.vocab_size = vocab
        else:
            raise ValueError(f"quantizer must be fsq or vq, not {kind!r}")

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (codes, indices, auxiliary loss)."""
        if self.kind == "fsq":
            codes, indices = self.q(z)
            return codes, indices, z.new_zeros(())
        codes, indices, commit = self.q(z)
        return codes, indices, commit.sum()

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        if self.kind == "fsq":
            return self.q.indices_to_codes(indices)
        return self.q.get_output_from_indices(indices)
