"""A two-layer transformer encoder that learns to sort a sequence of digits.

Each example is 8 random digits; the target at position i is the i-th smallest digit, so
every output position has to look at the whole sequence (attention) and count. The model:
token embedding + learned positions, two pre-norm encoder blocks (multi-head self-attention
and a GELU feed-forward, each with a residual connection), a final LayerNorm and a Dense
layer to 10 classes per position. It trains with Adam on fresh random sequences until the
per-token accuracy on 2,000 held-out sequences reaches the target (or time runs out).

    python examples/transformer_sort.py [--task sort|reverse] [--target 0.99] [--budget 115]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import graphc as gc
from graphc import nn


class EncoderBlock(nn.Model):
    """x + attention(norm(x)), then x + feed_forward(norm(x)) (pre-norm, as in GPT-2)."""

    def __init__(self, d_model: int, heads: int, hidden: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(), nn.LayerNorm()
        self.attention = nn.MultiHeadAttention(heads)
        self.feed_forward = nn.Sequential([nn.Dense(hidden, "gelu"), nn.Dense(d_model)])

    def forward(self, x, training):
        x = x + self.attention(self.norm1(x))
        return x + self.feed_forward(self.norm2(x))


class SortTransformer(nn.Model):
    """digits (N, T) int64 -> logits (N, T, vocab)."""

    def __init__(self, vocab: int = 10, length: int = 8, d_model: int = 32, heads: int = 4,
                 layers: int = 2, hidden: int = 64, seed: int = 0):
        super().__init__(seed=seed)
        self.length, self.d_model = length, d_model
        self.tokens = nn.Embedding(vocab, d_model)
        self.blocks = [EncoderBlock(d_model, heads, hidden) for _ in range(layers)]
        self.norm = nn.LayerNorm()
        self.head = nn.Dense(vocab)

    def build(self, digits):
        # learned positions: one d_model vector per position, added to the token embedding
        self.positions = self.add_variable("positions", (self.length, self.d_model),
                                           nn.init.normal, self.length, self.d_model,
                                           np.float32)

    def forward(self, digits, training):
        x = self.tokens(digits) + self.positions
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def make_batch(rng, n: int, length: int, task: str):
    x = rng.integers(0, 10, size=(n, length))
    y = np.sort(x, axis=1) if task == "sort" else x[:, ::-1]
    return x.astype(np.int64), np.ascontiguousarray(y).astype(np.int64)


def per_token_accuracy(model, x, y) -> float:
    return float(np.mean(nn.predict(model, x, batch_size=1000).argmax(-1) == y))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sort", choices=["sort", "reverse"])
    parser.add_argument("--length", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--target", type=float, default=0.99, help="held-out accuracy")
    parser.add_argument("--budget", type=float, default=115.0, help="seconds of training")
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    x_test, y_test = make_batch(np.random.default_rng(10_000 + args.seed), 2000,
                                args.length, args.task)
    model = SortTransformer(length=args.length, d_model=args.d_model, heads=args.heads,
                            layers=args.layers, hidden=2 * args.d_model, seed=args.seed)
    digits = gc.placeholder((None, args.length), dtype="int64", name="digits")
    target = gc.placeholder((None, args.length), dtype="int64", name="target")
    loss = nn.softmax_cross_entropy(model(digits, training=True), target)
    step = gc.function([digits, target], loss,
                       updates=nn.Adam(args.lr).updates(loss, model.params))

    started, steps, acc = time.perf_counter(), 0, 0.0
    while steps < args.max_steps:
        value = step(*make_batch(rng, args.batch_size, args.length, args.task))
        steps += 1
        if steps % args.eval_every == 0:
            acc = per_token_accuracy(model, x_test, y_test)
            print(f"step {steps:6d}  loss {float(value):.4f}  held-out per-token accuracy "
                  f"{acc:.4f}  {time.perf_counter() - started:6.1f} s", flush=True)
            if acc >= args.target or time.perf_counter() - started > args.budget:
                break
    seconds = time.perf_counter() - started
    acc = per_token_accuracy(model, x_test, y_test)
    whole = float(np.mean((nn.predict(model, x_test).argmax(-1) == y_test).all(axis=1)))
    print(model.summary())
    print(f"task {args.task}: final per-token accuracy {acc:.4f} on 2000 held-out "
          f"sequences ({whole:.4f} of them entirely right), after {steps} steps of "
          f"{args.batch_size} in {seconds:.1f} s of training")
    return {"accuracy": acc, "seconds": seconds, "steps": steps}


if __name__ == "__main__":
    main()
