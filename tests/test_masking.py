"""4M input/target sampling: budgets, disjointness, absent modalities never chosen, reproducible."""

from __future__ import annotations

import torch

from omnimill.train.config import MaskConfig
from omnimill.train.masking import flatten, sample_masks


def batch(b=16):
    g = torch.Generator().manual_seed(0)
    tokens = {"a": torch.randint(0, 50, (b, 20), generator=g), "b": torch.randint(0, 9, (b, 6), generator=g),
              "c": torch.randint(0, 30, (b, 12), generator=g)}
    masks = {"a": torch.ones(b, 20, dtype=torch.bool), "b": torch.ones(b, 6, dtype=torch.bool),
             "c": torch.arange(12).expand(b, 12) < torch.randint(1, 12, (b, 1), generator=g)}  # padded sequence
    masks["a"][: b // 2] = False  # half the samples lack modality a
    return {"tokens": tokens, "masks": masks}


def test_inputs_and_targets_are_valid_disjoint_and_within_budget():
    data = batch()
    names = ["a", "b", "c"]
    masked = sample_masks(data, names, MaskConfig(input_tokens=10, target_tokens=12, alpha=0.5),
                          torch.Generator().manual_seed(1))
    tokens, valid, mod, pos = flatten(data, names)
    assert masked.enc_valid.sum(1).le(10).all() and masked.dec_valid.sum(1).le(12).all()
    assert masked.enc_valid.sum(1).ge(1).all()  # every sample shows something
    for i in range(16):
        seen = set()
        for part in ("enc", "dec"):
            ok = getattr(masked, f"{part}_valid")[i]
            for m, p, t in zip(getattr(masked, f"{part}_mod")[i][ok], getattr(masked, f"{part}_pos")[i][ok],
                               getattr(masked, f"{part}_tok")[i][ok]):
                column = int((mod == m).nonzero()[0]) + int(p)
                assert valid[i, column] and tokens[i, column] == t  # a real, present token, correctly placed
                assert (int(m), int(p)) not in seen  # never both input and target
                seen.add((int(m), int(p)))
        if i < 8:
            assert 0 not in masked.enc_mod[i][masked.enc_valid[i]] and 0 not in masked.dec_mod[i][masked.dec_valid[i]]


def test_seeded_and_alpha_concentrates():
    data = batch(64)
    names = ["a", "b", "c"]
    one = sample_masks(data, names, MaskConfig(8, 8, 1.0), torch.Generator().manual_seed(3))
    two = sample_masks(data, names, MaskConfig(8, 8, 1.0), torch.Generator().manual_seed(3))
    assert torch.equal(one.enc_tok, two.enc_tok) and torch.equal(one.dec_pos, two.dec_pos)

    def modalities_per_sample(alpha):
        m = sample_masks(data, names, MaskConfig(12, 12, alpha), torch.Generator().manual_seed(4))
        return sum(len(set(m.enc_mod[i][m.enc_valid[i]].tolist())) for i in range(64)) / 64

    assert modalities_per_sample(0.05) < modalities_per_sample(5.0)
