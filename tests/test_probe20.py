"""probe20: bugs found by writing today's models (attention with padding masks, seq2seq,
VAE, ResNet, character LM) as a newcomer and by hostile input, each pinned by a test."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc import nn


def test_formula_of_a_loss_over_3d_values_is_left_as_built():
    # explain of a one-block transformer's loss ran sympy's cancel/factor over the whole
    # network for minutes: a sum over three axes is `sum[axis=...]`, which the guard that
    # leaves sums of matrices alone did not recognise
    x = gc.placeholder((2, 2, 2), dtype="float64", name="x")
    w = gc.placeholder((2, 2, 2), dtype="float64", name="w")
    cost = gc.sum(x * x) / 2 + gc.sum(x * w) / 2
    assert gc.formula(cost) == gc.formula(cost, simplify=False)


def test_explain_of_an_attention_block_loss():
    class Block(nn.Model):
        def __init__(self):
            super().__init__(seed=1)
            self.norm, self.mha = nn.LayerNorm(), nn.MultiHeadAttention(2)
            self.ff = nn.Dense(8, "gelu")

        def forward(self, x, training):
            x = x + self.mha(self.norm(x))
            return x + self.ff(x)

    x = gc.placeholder((None, 5, 8), dtype="float64", name="x")
    out = Block()(x)
    text = gc.explain({"loss": gc.sum(out * out) / 10})
    assert text.startswith("let z1 = ") and "loss = " in text and "erf(" in text
