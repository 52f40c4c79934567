"""A small decoder-only transformer for token sequences (docs/models.md).

``TinyTransformer(vocab, d_model=32, n_heads=2, n_layers=2, d_ff=64, max_len=32)``:
token and learned position embeddings, ``n_layers`` pre-norm blocks (LayerNorm ->
causal multi-head self-attention -> residual; LayerNorm -> Linear -> ReLU -> Linear ->
residual; the query/key/value projection has no bias), a final LayerNorm and a linear read-out to the vocabulary. Inputs are int64
tokens ``[B, T]`` (T <= max_len), outputs next-token logits ``[B, T, vocab]``. Embeddings
are initialized N(0, 0.02), linear weights Xavier uniform, biases zero. Attention is
written out (no fused kernel), so the batched vmap path evaluates it exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TinyTransformer", "CausalSelfAttention"]


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be a multiple of n_heads={n_heads}")
        self.h = n_heads
        # no bias: a key bias has zero gradient (softmax is shift invariant), and Adam would turn its
        # round-off gradient into lr-sized steps
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=-1)
        q, k, v = (t.reshape(B, T, self.h, D // self.h).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D // self.h)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        y = (self.drop(att) @ v).transpose(1, 2).reshape(B, T, D)
        return self.out(y)


class _Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, d_ff)
        self.ff2 = nn.Linear(d_ff, d_model)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)   # one module per call

    def forward(self, x):
        x = x + self.drop1(self.attn(self.ln1(x)))
        return x + self.drop2(self.ff2(F.relu(self.ff1(self.ln2(x)))))


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int, d_model: int = 32, n_heads: int = 2, n_layers: int = 2, d_ff: int = 64,
                 max_len: int = 32, dropout: float = 0.0):
        from .._validation import check_float, check_int

        super().__init__()
        vocab, d_model = check_int("vocab", vocab, 2), check_int("d_model", d_model, 1)
        n_heads, n_layers = check_int("n_heads", n_heads, 1), check_int("n_layers", n_layers, 1)
        d_ff, self.max_len = check_int("d_ff", d_ff, 1), check_int("max_len", max_len, 1)
        dropout = check_float("dropout", dropout, 0.0, 1.0, strict_max=True)
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.zeros(self.max_len, d_model))
        self.blocks = nn.ModuleList(_Block(d_model, n_heads, d_ff, dropout) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, tokens):
        T = tokens.shape[-1]
        if T > self.max_len:
            raise ValueError(f"sequence length {T} > max_len {self.max_len}")
        x = self.tok(tokens) + self.pos[:T]
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))
