"""Recurrent networks over `gc.scan`: an LSTM reads each digit image row by row, and a small
character model learns to continue a made-up pattern language.

    python examples/rnn_digits.py [--data digits|mnist5k] [--epochs 15] [--cell lstm|gru|rnn]

The digits part reads an 8x8 digit (scikit-learn) as a sequence of 8 rows of 8 pixels (or a
28x28 MNIST 5k digit as 28 rows of 28) and classifies it from the LSTM's last hidden state.
The character part trains a GRU on strings made by a small grammar (no data to download) and
samples from it.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import graphc as gc
from graphc import nn

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.SimpleRNN}


def digits(args) -> float:
    (x_train, y_train), (x_test, y_test) = nn.data.load(args.data, seed=args.seed)
    side = int(round(np.sqrt(x_train.shape[1])))
    x_train, x_test = x_train.reshape(-1, side, side), x_test.reshape(-1, side, side)
    model = nn.Sequential([CELLS[args.cell](args.units), nn.Dense(10)], seed=args.seed)
    started = time.perf_counter()
    nn.fit(model, "softmax_cross_entropy", nn.Adam(args.lr), x_train, y_train,
           epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
           validation_data=(x_test, y_test), verbose=0 if args.quiet else 1)
    seconds = time.perf_counter() - started
    result = nn.evaluate(model, "softmax_cross_entropy", x_test, y_test)
    print(f"{args.cell.upper()} on {args.data} ({side} rows of {side} pixels): test accuracy "
          f"{result['accuracy']:.2%} after {args.epochs} epochs, {seconds:.1f} s")
    return result["accuracy"]


# a character model on strings of a made-up grammar ------------------------------------------

ALPHABET = "ab.()"


def sentence(rng) -> str:
    """A word of a's and b's alternating in pairs, sometimes wrapped in brackets, then '.'."""
    word = "".join("ab"[k % 2] * 2 for k in range(rng.integers(1, 4)))
    return (f"({word})" if rng.random() < 0.5 else word) + "."


def characters(args) -> float:
    rng = np.random.default_rng(args.seed)
    text = "".join(sentence(rng) for _ in range(400))
    ids = np.array([ALPHABET.index(ch) for ch in text])
    steps = 16
    starts = np.arange(0, len(ids) - steps - 1, 3)
    x = np.stack([ids[s:s + steps] for s in starts])
    y = np.stack([ids[s + 1:s + steps + 1] for s in starts])
    onehot = np.eye(len(ALPHABET), dtype=np.float32)
    tokens = gc.placeholder((None, steps, len(ALPHABET)), name="chars")
    targets = gc.placeholder((None, steps), "int64", name="next")
    gru = nn.GRU(32, return_sequences=True, seed=args.seed)
    head = nn.Dense(len(ALPHABET), seed=args.seed)
    logits = head(gru(tokens))
    loss = gc.mean(gc.softmax_cross_entropy(logits, targets))
    params = gru.params + head.params
    step = gc.function([tokens, targets], loss, updates=nn.Adam(1e-2).updates(loss, params))
    predict = gc.function([tokens], logits)
    for epoch in range(args.char_epochs):
        order = rng.permutation(len(x))
        for k in range(0, len(x), 32):
            batch = order[k:k + 32]
            value = step(onehot[x[batch]], y[batch])
    accuracy = np.mean(predict(onehot[x]).argmax(-1) == y)
    seed_text = "(aabb)."
    out = list(seed_text)
    for _ in range(24):                          # greedy continuation of the last 16 chars
        window = [ALPHABET.index(ch) for ch in out[-steps:]]
        window = [window[0]] * (steps - len(window)) + window
        out.append(ALPHABET[int(predict(onehot[np.array([window])])[0, -1].argmax())])
    print(f"GRU character model: next-character accuracy {accuracy:.2%} (loss {value:.3f}); "
          f"continues {seed_text!r} as {''.join(out[len(seed_text):])!r}")
    return accuracy


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits", help="digits (8x8, default) or mnist5k")
    parser.add_argument("--cell", choices=sorted(CELLS), default="lstm")
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--char-epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    accuracy = digits(args)
    if args.char_epochs:
        characters(args)
    return accuracy


if __name__ == "__main__":
    main()
