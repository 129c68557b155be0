"""4M's input/target sampling: per sample, Dirichlet shares of the token budgets over its modalities.

For each sample, with M modalities of which it has some (present):
    p_in, p_tgt ~ Dirichlet(alpha) over the present modalities (absent ones get 0)
    k_in[m]  = min(floor(p_in[m]  * input_tokens),  available[m])
    k_tgt[m] = min(floor(p_tgt[m] * target_tokens), available[m] - k_in[m])
and within each modality k_in random valid positions become inputs and the next k_tgt random ones
targets: inputs and targets never overlap, padding and absent modalities are never chosen.
Small alpha puts most of the budget on few modalities (4M uses 0.2-1.0); alpha = 1 is uniform over
the simplex.

The budget is per sample, never per modality, so a long modality (a clip's 8 x 16 x 16 = 2048 frame tokens)
gets its Dirichlet share of it like any other: with budgets of 128 over frames, audio and a caption, 38% of
a clip's inputs are frame tokens on average (49% with refill), i.e. 38 (63) of its 2048 frame tokens.
A share larger than what a short modality has (a 12-token caption given 0.6 of 128) is capped, and the
rest of the budget is lost: with `mask.refill` (off by default, which keeps earlier runs as they were) it
goes to the modalities with tokens left, in proportion to how many they have left. Mean tokens used of
budgets 128 / 128 (alpha 1, 256 samples; the figures that
tests/test_train_time.py::test_long_modalities_get_their_share_of_the_budgets prints with -s):
clip (2048 frame, 600 audio, 12-of-32 caption tokens) inputs 96 / targets 84 without refill, 127 / 127 with
it; image (256 rgb, 40 palette, 12-of-32 caption tokens) 80 / 55 without, 128 / 128 with.

Everything is vectorised over the batch; the generator makes it reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omnimill.train.config import MaskConfig


@dataclass
class Masked:
    enc_tok: torch.Tensor  # (B, N_in) token ids within their modality
    enc_mod: torch.Tensor  # (B, N_in) modality index
    enc_pos: torch.Tensor  # (B, N_in) position within the modality
    enc_valid: torch.Tensor  # (B, N_in) bool
    dec_tok: torch.Tensor  # (B, N_tgt) target ids
    dec_mod: torch.Tensor
    dec_pos: torch.Tensor
    dec_valid: torch.Tensor

    def to(self, device) -> "Masked":
        return Masked(*(getattr(self, f).to(device, non_blocking=True) for f in self.__dataclass_fields__))

    def model_inputs(self) -> tuple:
        return (self.enc_tok, self.enc_mod, self.enc_pos, self.enc_valid, self.dec_mod, self.dec_pos, self.dec_valid)


def flatten(batch: dict, names: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch dicts -> tokens (B, T), valid (B, T), modality index (T,), position (T,) over the modalities."""
    tokens = torch.cat([batch["tokens"][n] for n in names], dim=1)
    valid = torch.cat([batch["masks"][n] for n in names], dim=1)
    lengths = [batch["tokens"][n].shape[1] for n in names]
    mod = torch.repeat_interleave(torch.arange(len(names)), torch.tensor(lengths))
    pos = torch.cat([torch.arange(n) for n in lengths])
    return tokens, valid, mod, pos


def _dirichlet(present: torch.Tensor, alpha: float, generator: torch.Generator) -> torch.Tensor:
    # A Dirichlet sample is independent Gamma(alpha) draws, normalised. torch.distributions takes no
    # generator, so draw Gamma(alpha) = -log(U) for alpha = 1, else via the Marsaglia-Tsang-free route:
    # Gamma(a) = Gamma(a + 1) * U^(1/a), with Gamma(a + 1) from torch's sampler seeded by the generator.
    u = torch.rand(present.shape, generator=generator)
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = torch._standard_gamma(torch.full(present.shape, alpha + 1.0))
    g = g * u.clamp_min(1e-12) ** (1.0 / alpha) * present
    return g / g.sum(dim=1, keepdim=True).clamp_min(1e-12)


def _refill(left: torch.Tensor, room: torch.Tensor) -> torch.Tensor:
    """Spread each sample's unused budget `left` (B,) over its modalities' unused tokens `room` (B, M), in
    proportion to the room (rounded down, so never more than either)."""
    share = room / room.sum(1, keepdim=True).clamp_min(1)
    return torch.minimum((share * left.clamp_min(0)[:, None]).floor().long(), room)


def sample_masks(batch: dict, names: list[str], cfg: MaskConfig, generator: torch.Generator) -> Masked:
    tokens, valid, mod, pos = flatten(batch, names)
    b, t = tokens.shape
    m = len(names)
    available = torch.zeros(b, m, dtype=torch.long).index_add_(1, mod, valid.long())
    present = available > 0
    n_in, n_tgt = min(cfg.input_tokens, t), min(cfg.target_tokens, t)
    k_in = torch.minimum((_dirichlet(present, cfg.alpha, generator) * n_in).floor().long(), available)
    # Every sample with any token shows at least one: the encoder needs something to read.
    empty = (k_in.sum(1) == 0) & present.any(1)
    k_in[empty, available[empty].argmax(1)] = 1
    k_tgt = torch.minimum((_dirichlet(present, cfg.alpha, generator) * n_tgt).floor().long(), available - k_in)
    if cfg.refill:  # after both draws, so that the random stream is the same with and without refill
        k_in = k_in + _refill(n_in - k_in.sum(1), available - k_in - k_tgt)
        k_tgt = k_tgt + _refill(n_tgt - k_tgt.sum(1), available - k_in - k_tgt)

    # Random rank of each valid position within its modality (invalid positions rank last).
    score = torch.rand(b, t, generator=generator) + (~valid) * 2.0
    rank = torch.empty(b, t, dtype=torch.long)
    for i in range(m):
        cols = (mod == i).nonzero().squeeze(1)
        order = score[:, cols].argsort(dim=1)
        rank[:, cols] = order.argsort(dim=1)
    k_in_at, k_tgt_at = k_in[:, mod], k_tgt[:, mod]
    role = torch.where(rank < k_in_at, 1, torch.where(rank < k_in_at + k_tgt_at, 2, 0)) * valid

    def gather(which: int, n: int):
        idx = (role != which).to(torch.int8).argsort(dim=1, stable=True)[:, :n]  # chosen first, in order
        return tokens.gather(1, idx), mod[idx], pos[idx], role.gather(1, idx) == which

    return Masked(*gather(1, n_in), *gather(2, n_tgt))
