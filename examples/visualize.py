"""Seeing what a network computes: pictures of graphs and formulas of gradients.

For logistic regression with scalar w, b, x, y it prints the loss and its gradients as
formulas (dL/dw reads x*(sigmoid(b + w*x) - y), the textbook result) and draws the forward,
backward and update graph. For a 784-128-64-10 MLP it prints the gradients in matrix
notation, with shared subexpressions named once, and draws the full graph, the forward graph,
the layers collapsed into boxes, and the compiled function before and after optimization. For
one attention head, softmax(X W_q (X W_k)^T / sqrt(d)) X W_v, it prints the head and the
gradients of its weights as formulas and draws its forward and backward graph, and draws an
nn.MultiHeadAttention layer (4 heads as one batched axis, causal).

    python examples/visualize.py [--out pictures] [--format svg]
"""
from __future__ import annotations

import argparse
import os

import numpy as np

import graphc as gc


def logistic_regression():
    """Scalar logistic regression: the loss, its gradients and one SGD step's updates."""
    w = gc.variable(np.float32(0.5), name="w")
    b = gc.variable(np.float32(0.0), name="b")
    x = gc.placeholder((), name="x")
    y = gc.placeholder((), name="y")
    p = gc.sigmoid(w * x + b)
    loss = -(y * gc.log(p) + (1 - y) * gc.log(1 - p))
    gw, gb = gc.grad(loss, [w, b])
    return loss, {"dL/dw": gw, "dL/db": gb}, [(w, w - 0.1 * gw), (b, b - 0.1 * gb)], [x, y]


def mlp(sizes=(784, 128, 64, 10), seed: int = 0):
    """An MLP built from ops, one name scope per layer, with its loss and gradients."""
    rng = np.random.default_rng(seed)
    x = gc.placeholder((None, sizes[0]), name="x")
    y = gc.placeholder((None,), dtype="int64", name="y")
    h, params = x, []
    for k, (m, n) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        with gc.name_scope(f"dense{k}"):
            W = gc.variable((rng.normal(size=(m, n)) / np.sqrt(m)).astype(np.float32),
                            name=f"W{k}")
            b = gc.variable(np.zeros(n, np.float32), name=f"b{k}")
            h = h @ W + b
            if k < len(sizes) - 1:
                h = gc.relu(h)
        params += [W, b]
    loss = gc.mean(gc.softmax_cross_entropy(h, y))
    grads = gc.grad(loss, params)
    return loss, params, grads, [x, y]


def attention_head(tokens: int = 4, d_model: int = 8, d_head: int = 4, seed: int = 0):
    """One self-attention head over a (tokens, d_model) sequence X, a loss, its gradients."""
    rng = np.random.default_rng(seed)
    x = gc.placeholder((tokens, d_model), name="X")
    with gc.name_scope("head"):
        w_q, w_k, w_v = (gc.variable(rng.normal(size=(d_model, d_head)).astype(np.float32),
                                     name=f"W_{what}") for what in "qkv")
        q, k, v = x @ w_q, x @ w_k, x @ w_v
        weights = gc.softmax(q @ k.T * float(1 / np.sqrt(d_head)), axis=-1)
        head = weights @ v
    loss = gc.sum(head * head)
    grads = gc.grad(loss, [w_q, w_k, w_v])
    return weights, head, loss, dict(zip(("dL/dW_q", "dL/dW_k", "dL/dW_v"), grads))


def attention_layer(tokens: int = 4, d_model: int = 8, heads: int = 4):
    """nn.MultiHeadAttention on a batch of sequences, with a loss (for the picture)."""
    x = gc.placeholder((None, tokens, d_model), name="X")
    out = gc.nn.MultiHeadAttention(heads, causal=True)(x)
    return gc.mean(out * out)


def main(argv=None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="pictures", help="folder for the pictures")
    parser.add_argument("--format", default="svg", choices=["svg", "png", "pdf", "dot"])
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    written = []

    def picture(name: str, what, **options) -> None:
        path = os.path.join(args.out, f"{name}.{args.format}")
        written.append(gc.render(what, path, **options).written)

    loss, grads, updates, inputs = logistic_regression()
    print("logistic regression")
    print("  L     =", gc.formula(loss))
    for name, g in grads.items():
        print(f"  {name} =", gc.formula(g))
    print("\n".join("  " + line for line in gc.explain({"L": loss, **grads}).splitlines()))
    picture("logistic", gc.Graph([loss], updates))

    loss, params, grads, inputs = mlp()
    named = {"loss": loss, **{f"d{p.name}": g for p, g in zip(params, grads)}}
    print("\nMLP 784-128-64-10")
    print("\n".join("  " + line for line in gc.explain(named).splitlines()))
    step = [(p, p - 0.1 * g) for p, g in zip(params, grads)]
    picture("mlp", gc.Graph([loss], step))
    picture("mlp_forward", loss, backward=False)
    picture("mlp_layers", gc.Graph([loss], step), collapse=True)
    picture("mlp_before_after", gc.Graph([loss], step), compare=True)
    if hasattr(gc, "function"):
        picture("mlp_compiled", gc.function(inputs, loss, updates=step))

    weights, head, loss, grads = attention_head()
    print("\none attention head")
    print("\n".join("  " + line for line in gc.explain(
        {"A": weights, "head": head, **grads}).splitlines()))
    picture("attention_head", loss)
    picture("attention_layer", attention_layer(), backward=False)
    print("\nwrote " + ", ".join(written))
    return written


if __name__ == "__main__":
    main()
