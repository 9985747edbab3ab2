"""Linear regression for house prices, written with graphc's low-level pieces.

The data is made here: prices from size, rooms and age with known coefficients plus noise.
The model is two variables, the loss a mean squared error, the training step one compiled
function whose updates are built by gc.grad (through nn.SGD). It prints the coefficients it
learned next to the true ones.

    python examples/linear_regression.py [--epochs 300] [--lr 0.1]
"""
from __future__ import annotations

import argparse

import numpy as np

import graphc as gc
from graphc import nn

FEATURES = ("size_m2", "rooms", "age_years")
TRUE_COEF = np.array([2.0, 15.0, -0.8])      # thousand dollars per unit of each feature
TRUE_BIAS = 50.0


def make_houses(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n houses: features (n, 3) and prices in thousands of dollars (n,)."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(40, 250, n)
    rooms = np.clip(np.round(size / 40 + rng.normal(0, 0.7, n)), 1, 8)
    age = rng.uniform(0, 100, n)
    x = np.stack([size, rooms, age], axis=1)
    return x, x @ TRUE_COEF + TRUE_BIAS + rng.normal(0, 20, n)


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300, help="full-batch gradient steps")
    parser.add_argument("--lr", type=float, default=0.1, help="learning rate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    x_raw, y_raw = make_houses(1000, args.seed)
    n_train = 800
    mean, std = x_raw[:n_train].mean(0), x_raw[:n_train].std(0)    # standardize on train only
    xs = ((x_raw - mean) / std).astype(np.float32)
    ys = y_raw.astype(np.float32).reshape(-1, 1)

    x = gc.placeholder((None, 3), name="x")
    y = gc.placeholder((None, 1), name="price")
    w = gc.variable(np.zeros((3, 1), np.float32), name="w")
    b = gc.variable(np.float32(ys[:n_train].mean()), name="b")
    pred = x @ w + b
    loss = nn.mse(pred, y)
    step = gc.function([x, y], loss, updates=nn.SGD(args.lr).updates(loss, [w, b]))
    for epoch in range(args.epochs):
        train_mse = float(step(xs[:n_train], ys[:n_train]))

    test = gc.function([x, y], loss)
    test_mse = float(test(xs[n_train:], ys[n_train:]))
    r2 = 1 - test_mse / float(np.var(ys[n_train:]))
    coef = w.value[:, 0] / std                      # back to the original units
    bias = float(b.value) - float(coef @ mean)
    print(f"trained {args.epochs} steps: train MSE {train_mse:.1f}, test MSE {test_mse:.1f}, "
          f"test R^2 {r2:.3f}")
    print(f"{'feature':<12}{'learned':>10}{'true':>10}")
    for name, c, t in zip(FEATURES, coef, TRUE_COEF):
        print(f"{name:<12}{c:>10.3f}{t:>10.3f}")
    print(f"{'bias':<12}{bias:>10.3f}{TRUE_BIAS:>10.3f}")
    print(f"a 120 m2, 3-room, 10-year-old house: {bias + coef @ [120, 3, 10]:.0f}k "
          f"(true model: {TRUE_BIAS + TRUE_COEF @ [120, 3, 10]:.0f}k)")
    return r2


if __name__ == "__main__":
    main()
