"""The MNIST MLP (784-128-64-10) trained data-parallel on Dask workers, then batch inference.

By default it starts a local cluster of 2 worker processes; `--scheduler ADDRESS` runs the same
script on an existing cluster (started with `dask scheduler` and `dask worker ADDRESS` on other
machines, each with graphc installed). `--compare` also trains with nn.fit in this process and
prints the largest parameter difference (the two are the same computation, up to rounding).

    python examples/distributed_mnist.py [--workers 2] [--epochs 5] [--batch-size 256]
    python examples/distributed_mnist.py --scheduler tcp://10.0.0.5:8786
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import graphc.distributed as gd
from graphc import nn


def build_model(seed: int) -> nn.Sequential:
    return nn.Sequential([nn.Dense(128, "relu"), nn.Dense(64, "relu"), nn.Dense(10)],
                         seed=seed)


def connect(args):
    """A client of the given scheduler, or of a new local cluster (closed with the client)."""
    from distributed import Client, LocalCluster
    if args.scheduler:
        return Client(args.scheduler), None
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                           dashboard_address=":0")
    return Client(cluster), cluster


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheduler", default=None,
                        help="address of a running Dask scheduler, e.g. tcp://host:8786")
    parser.add_argument("--workers", type=int, default=2, help="local worker processes")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--limit", type=int, default=None, help="use only N training images")
    parser.add_argument("--compare", action="store_true",
                        help="also train with nn.fit here and compare the parameters")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    args = parser.parse_args(argv)

    (x_train, y_train), (x_test, y_test) = nn.data.load("mnist5k", seed=args.seed)
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    kwargs = dict(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                  validation_data=(x_test, y_test), verbose=0 if args.quiet else 1)
    client, cluster = connect(args)
    try:
        workers = len(client.ncores())
        print(f"mnist5k: {len(x_train)} training and {len(x_test)} test images on "
              f"{workers} Dask worker(s)")
        model = build_model(args.seed)
        started = time.perf_counter()
        gd.fit(model, "softmax_cross_entropy", nn.Adam(args.lr), x_train, y_train,
               client=client, **kwargs)
        seconds = time.perf_counter() - started
        print(f"trained in {seconds:.1f} s: {len(x_train) * args.epochs / seconds:.0f} "
              f"samples/s on {workers} worker(s)")
        predicted = gd.predict(model, x_test, client=client)      # a lazy Dask array
        labels = client.compute(predicted).result().argmax(axis=1)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    accuracy = float(np.mean(labels == y_test))
    print(f"test accuracy {accuracy:.2%} (predicted on the workers)")
    if args.compare:
        single = build_model(args.seed)
        started = time.perf_counter()
        nn.fit(single, "softmax_cross_entropy", nn.Adam(args.lr), x_train, y_train,
               **dict(kwargs, verbose=0))
        seconds = time.perf_counter() - started
        diff = max(float(np.max(np.abs(a.value - b.value)))
                   for a, b in zip(model.params, single.params))
        print(f"nn.fit in one process: {len(x_train) * args.epochs / seconds:.0f} samples/s; "
              f"max abs parameter difference {diff:.3g}")
    return accuracy


if __name__ == "__main__":
    main()
