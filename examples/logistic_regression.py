"""Logistic regression for ad clicks: will a visitor click the ad?

The data is made here from a known logistic model of four visitor features. The model is one
Dense unit with a sigmoid, trained with binary cross-entropy, SGD with momentum and a little L2
regularization by `nn.fit`. It prints the accuracy and the weights it learned next to the true
ones (features are standardized, so weights are log-odds per standard deviation).

    python examples/logistic_regression.py [--epochs 20]
"""
from __future__ import annotations

import argparse

import numpy as np

from graphc import nn

FEATURES = ("minutes_on_site", "age", "ad_relevance", "is_mobile")
TRUE_W = np.array([1.2, -0.5, 2.0, 0.4])    # log-odds per standard deviation
TRUE_B = -0.6


def make_clicks(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n visitors: standardized features (n, 4) float32 and clicks (n, 1) as 0.0/1.0."""
    rng = np.random.default_rng(seed)
    raw = np.stack([rng.gamma(2.0, 3.0, n), rng.uniform(18, 70, n), rng.beta(2, 3, n),
                    rng.integers(0, 2, n)], axis=1)
    x = (raw - raw.mean(0)) / raw.std(0)
    p = 1 / (1 + np.exp(-(x @ TRUE_W + TRUE_B)))
    clicks = (rng.uniform(size=n) < p).astype(np.float32)
    return x.astype(np.float32), clicks.reshape(-1, 1)


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--l2", type=float, default=1e-4, help="L2 regularization strength")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    args = parser.parse_args(argv)

    x, y = make_clicks(6000, args.seed)
    (x_train, y_train), (x_test, y_test) = nn.data.split(x, y, test_fraction=0.2,
                                                          seed=args.seed)
    model = nn.Sequential([nn.Dense(1, "sigmoid", kernel_init="zeros")], seed=args.seed)
    nn.fit(model, "binary_cross_entropy", nn.SGD(args.lr, momentum=0.9), x_train, y_train,
           epochs=args.epochs, batch_size=64, validation_data=(x_test, y_test),
           l2=args.l2, seed=args.seed, verbose=0 if args.quiet else 1)

    result = nn.evaluate(model, "binary_cross_entropy", x_test, y_test)
    best = float(np.mean((x_test @ TRUE_W + TRUE_B > 0) == (y_test[:, 0] > 0.5)))
    print(f"test accuracy {result['accuracy']:.2%} (the true model scores {best:.2%}), "
          f"test loss {result['loss']:.4f}")
    dense = model.layers[0]
    print(f"{'feature':<18}{'learned':>9}{'true':>9}")
    for name, w, t in zip(FEATURES, dense.W.value[:, 0], TRUE_W):
        print(f"{name:<18}{w:>9.3f}{t:>9.3f}")
    print(f"{'bias':<18}{float(dense.b.value[0]):>9.3f}{TRUE_B:>9.3f}")
    return result["accuracy"]


if __name__ == "__main__":
    main()
