"""A 4M-style encoder-decoder over tokens of many modalities (nanoGPT-sized and nanoGPT-plain), and
`CausalModel`, a decoder-only model of the same blocks for next-token prediction (at the end).

Every token is embedded as  token embedding (one table, each modality's ids offset into it)
                          + position embedding (each modality has its own L positions)
                          + modality embedding
                          + time embedding (only modalities with a time axis: a clip's frames, audio segments).
A modality with `time_steps` T lays out its L tokens time-major (step 0's first): the token at position l is
at time step i = l // (L / T) and at place l % (L / T) within its step. Its position embedding has only the
L / T places of one step (a frame's grid cells are the same cells in every frame), and the time embedding
says when: a learned table of TIME_KNOTS vectors on relative clip time [0, 1], linearly interpolated at the
step's middle (i + 0.5) / T. The table is shared by all modalities, so frame 2 of 8 (relative time 0.3125)
and audio segment 1 of 3 (0.5) sit on one time line, and frames and audio that overlap in time look alike.
A model whose modalities have no time axis has no time table at all: image-only models are exactly the
ones before time existed (same parameters, same initial values for a seed).
The encoder reads the visible input tokens. The decoder gets one query per target token (its position
and modality embeddings, no content), attends to the other queries and to the encoder, and each
modality's head turns its queries into logits over that modality's vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omnimill.train.config import ModelConfig


TIME_KNOTS = 17  # knots of the time table at relative times 0, 1/16, ..., 1 (8 frames sit on every other one)


@dataclass(frozen=True)
class ModalitySpec:
    name: str
    vocab_size: int
    length: int
    time_steps: int = 0  # 0: no time axis; else length = time_steps x tokens per step, time-major

    def __post_init__(self):
        if self.time_steps < 0 or (self.time_steps and self.length % self.time_steps):
            raise ValueError(f"{self.name}: {self.length} tokens do not split into {self.time_steps} time steps")

    @property
    def per_step(self) -> int:
        """Positions of one time step (all L when there is no time axis)."""
        return self.length // self.time_steps if self.time_steps else self.length


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, context, key_ok, causal: bool = False):
        """x (B, T, D) attends to context (B, S, D) where key_ok (B, S) is true; with `causal` (self-attention,
        key_ok None), position t attends to positions 0..t only."""
        b, t, d = x.shape
        q = self.q(x).view(b, t, self.heads, -1).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        mask = None if causal else key_ok[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0,
                                           is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block; with `cross`, a cross-attention to the encoder between the two."""

    def __init__(self, cfg: ModelConfig, cross: bool = False):
        super().__init__()
        dim, hidden = cfg.dim, int(cfg.dim * cfg.mlp_ratio)
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, cfg.heads, cfg.dropout)
        self.cross = cross
        if cross:
            self.norm_x, self.cross_attn = nn.LayerNorm(dim), Attention(dim, cfg.heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(cfg.dropout))

    def forward(self, x, x_ok, memory=None, memory_ok=None, causal: bool = False):
        h = self.norm1(x)
        x = x + self.attn(h, h, x_ok, causal)
        if self.cross:
            x = x + self.cross_attn(self.norm_x(x), memory, memory_ok)
        return x + self.mlp(self.norm2(x))


def _attendable(valid: torch.Tensor) -> torch.Tensor:
    """Keys a row may attend to: the valid ones, or all of them in a row with none (whose output is
    unused; an all-false mask would make softmax produce NaNs)."""
    return valid | ~valid.any(dim=1, keepdim=True)


class MultimodalModel(nn.Module):
    def __init__(self, cfg: ModelConfig, modalities: list[ModalitySpec]):
        super().__init__()
        self.cfg, self.modalities = cfg, list(modalities)
        vocab = torch.tensor([m.vocab_size for m in modalities])
        places = torch.tensor([m.per_step for m in modalities])  # position rows: L, or L / T with a time axis
        self.register_buffer("vocab_offset", torch.cat([torch.zeros(1, dtype=torch.long), vocab.cumsum(0)[:-1]]),
                             persistent=False)
        self.register_buffer("pos_offset", torch.cat([torch.zeros(1, dtype=torch.long), places.cumsum(0)[:-1]]),
                             persistent=False)
        self.register_buffer("per_step", places, persistent=False)
        self.register_buffer("time_steps", torch.tensor([m.time_steps for m in modalities]), persistent=False)
        self.token_emb = nn.Embedding(int(vocab.sum()), cfg.dim)
        self.pos_emb = nn.Embedding(int(places.sum()), cfg.dim)
        self.mod_emb = nn.Embedding(len(modalities), cfg.dim)
        self.timed = any(m.time_steps for m in modalities)
        if self.timed:  # created only then: a model without time axes keeps the parameters (and RNG draws) it had
            self.time_emb = nn.Embedding(TIME_KNOTS, cfg.dim)
        self.encoder = nn.ModuleList(Block(cfg) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(Block(cfg, cross=True) for _ in range(cfg.decoder_layers))
        self.enc_norm, self.dec_norm = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.heads = nn.ModuleList(nn.Linear(cfg.dim, m.vocab_size) for m in modalities)
        self.apply(self._init)

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def _where(self, mod, pos):
        """Where a token is: its place (within its time step, for a modality with a time axis), its
        modality, and when it is (modalities with a time axis only)."""
        where = self.pos_emb(self.pos_offset[mod] + pos % self.per_step[mod]) + self.mod_emb(mod)
        return where + self._when(mod, pos) if self.timed else where

    def relative_time(self, mod, pos) -> torch.Tensor:
        """(i + 0.5) / T for the token's time step i of T; -1 for modalities without a time axis."""
        steps = self.time_steps[mod]
        step = torch.div(pos, self.per_step[mod], rounding_mode="floor")
        return torch.where(steps > 0, (step + 0.5) / steps.clamp_min(1), -1.0)

    def _when(self, mod, pos) -> torch.Tensor:
        """The time embedding: the table linearly interpolated at the token's relative time; zero for
        modalities without a time axis."""
        t = self.relative_time(mod, pos)
        x = t.clamp(0, 1) * (TIME_KNOTS - 1)
        low = x.floor().long().clamp(max=TIME_KNOTS - 2)
        w = (x - low)[..., None].to(self.time_emb.weight.dtype)
        emb = (1 - w) * self.time_emb(low) + w * self.time_emb(low + 1)
        return emb * (t >= 0)[..., None]

    def forward(self, enc_tok, enc_mod, enc_pos, enc_valid, dec_mod, dec_pos, dec_valid, dec_tok=None):
        """Token ids are per modality (0..V_m-1). Returns the decoder's hidden states (B, T_dec, D), or with
        targets `dec_tok` the losses (see `losses`): computed inside forward so DDP sees every head."""
        hidden = self.hidden(enc_tok, enc_mod, enc_pos, enc_valid, dec_mod, dec_pos, dec_valid)
        return hidden if dec_tok is None else self.losses(hidden, dec_mod, dec_tok, dec_valid)

    def hidden(self, enc_tok, enc_mod, enc_pos, enc_valid, dec_mod, dec_pos, dec_valid) -> torch.Tensor:
        x = self.token_emb(self.vocab_offset[enc_mod] + enc_tok) + self._where(enc_mod, enc_pos)
        enc_ok = _attendable(enc_valid)
        for block in self.encoder:
            x = block(x, enc_ok)
        memory = self.enc_norm(x)
        y = self._where(dec_mod, dec_pos)
        dec_ok = _attendable(dec_valid)
        for block in self.decoder:
            y = block(y, dec_ok, memory, enc_ok)
        return self.dec_norm(y)

    def losses(self, hidden, dec_mod, dec_tok, dec_valid) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, int]]]:
        """Cross-entropy over all valid targets (mean per token), and (summed loss, count) per modality."""
        total, count, per = hidden.new_zeros(()), 0, {}
        for i, m in enumerate(self.modalities):
            sel = dec_valid & (dec_mod == i)
            n = int(sel.sum())
            if n == 0:  # no targets of this modality here; touch its head so DDP's gradient sync sees it
                total = total + 0.0 * sum(p.sum() for p in self.heads[i].parameters())
                continue
            loss = F.cross_entropy(self.heads[i](hidden[sel]).float(), dec_tok[sel], reduction="sum")
            total, count = total + loss, count + n
            per[m.name] = (loss.detach(), n)
        return total / max(count, 1), per

    def logits(self, hidden, modality: int) -> torch.Tensor:
        return self.heads[modality](hidden)

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """Decay matrices; not biases, norms or embeddings (nanoGPT's rule, embeddings as in 4M)."""
        decay = [p for n, p in self.named_parameters() if p.dim() >= 2 and "emb" not in n]
        rest = [p for n, p in self.named_parameters() if not (p.dim() >= 2 and "emb" not in n)]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


class CausalModel(nn.Module):
    """Decoder-only next-token model over one id space (packed interleaved sequences: text ids, image ids,
    specials): token embedding over the whole vocabulary + a learned position 0..L-1, `decoder_layers` of the
    4M model's Blocks with a causal mask (no encoder, no cross-attention), and one head over the vocabulary."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, seq_len: int):
        super().__init__()
        self.cfg, self.vocab_size, self.seq_len = cfg, vocab_size, seq_len
        self.token_emb = nn.Embedding(vocab_size, cfg.dim)
        self.pos_emb = nn.Embedding(seq_len, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, vocab_size)
        self.apply(MultimodalModel._init)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) ids, T <= seq_len -> (B, T, vocab) logits; the logits at t predict the token at t + 1."""
        x = self.token_emb(tokens) + self.pos_emb(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x, None, causal=True)
        return self.head(self.norm(x))

    parameter_groups = MultimodalModel.parameter_groups
