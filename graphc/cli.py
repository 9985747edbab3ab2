"""The `graphc` command: `graphc demo`, `graphc render FILE`, `graphc inspect FILE`,
`graphc formula FILE`."""
from __future__ import annotations

import argparse
import os
import sys
import time

import graphc

DEMO_EPOCHS = 30


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except (graphc.GraphcError, OSError) as e:   # OSError: `demo --out` under a file, say
        print(f"graphc {args.command}: error: {e}", file=sys.stderr)
        return 1


def positive(text: str) -> int:
    """argparse type: a whole number >= 1 (--epochs 0 or -1 would train nothing)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def seed(text: str) -> int:
    """argparse type: a seed NumPy takes, a whole number >= 0 (-1 was a bare ValueError)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphc", description=graphc.__doc__,
        epilog="Start with `graphc demo`; `graphc COMMAND --help` explains each command.")
    parser.add_argument("--version", action="version", version=f"graphc {graphc.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="train an MLP on the handwritten digits and draw its graphs",
        description="Train a 64-128-64-10 MLP on scikit-learn's 8x8 digits, print the test "
                    "accuracy, and write the forward and backward graph pictures, the gradient "
                    "formulas of the last layer and the saved graph into a folder.")
    demo.add_argument("--epochs", type=positive, default=DEMO_EPOCHS, help="training epochs "
                      f"(default {DEMO_EPOCHS})")
    demo.add_argument("--seed", type=seed, default=0, help="seed for weights and shuffling")
    demo.add_argument("--out", default=".", help="folder for the files (default: here)")
    demo.add_argument("--quiet", action="store_true", help="no progress or per-epoch lines")
    demo.set_defaults(run=run_demo)

    render = sub.add_parser(
        "render", help="draw a graph saved with gc.save",
        description="Draw a graph saved with gc.save (FILE.json + FILE.npz) as a picture.")
    render.add_argument("file", help="the saved graph (.json)")
    render.add_argument("-o", "--output", help="picture to write; the format follows the suffix "
                        "(svg, png, pdf, dot); default FILE.svg")
    render.add_argument("--forward", action="store_true", help="leave out gradient nodes")
    render.add_argument("--optimized", action="store_true", help="draw the optimized graph")
    render.add_argument("--collapse", action="store_true",
                        help="fold each top-level name scope into one box (big graphs)")
    render.set_defaults(run=run_render)

    inspect = sub.add_parser(
        "inspect", help="write the interactive inspector page of a saved graph",
        description="Write one self-contained HTML page showing the forward, backward and "
                    "optimized graphs of a graph saved with gc.save (FILE.json) or of an ONNX "
                    "model (FILE.onnx): click a node for its shape, formula and code, step "
                    "through the passes, open name scopes.")
    inspect.add_argument("file", help="the saved graph (.json) or ONNX model (.onnx)")
    inspect.add_argument("-o", "--output", help="page to write (default FILE.html)")
    inspect.set_defaults(run=run_inspect)

    formula = sub.add_parser(
        "formula", help="print the formulas of a graph saved with gc.save",
        description="Print the outputs of a saved graph (and its updates) as formulas.")
    formula.add_argument("file", help="the saved graph (.json)")
    formula.add_argument("--latex", action="store_true", help="LaTeX instead of text")
    formula.set_defaults(run=run_formula)
    return parser


def loaded(path: str):
    """What a file holds: a saved Graph, node or list of nodes; an ONNX model's outputs."""
    if path.endswith(".onnx"):                   # its outputs, by ONNX name
        from graphc.onnx import load_outputs
        return load_outputs(path)
    return graphc.load(path)


def loaded_nodes(path: str) -> list:
    """The outputs (and update values) of a saved graph, in the order saved."""
    obj = loaded(path)
    if isinstance(obj, graphc.Graph):
        return list(obj.outputs) + [new for _, new in obj.updates]
    return [obj] if isinstance(obj, graphc.Node) else list(obj)


def run_render(args) -> int:
    out = output_path(args, ".svg")
    nodes = loaded_nodes(args.file)
    dot = graphc.render(nodes, out, backward=not args.forward, optimized=args.optimized,
                        collapse=args.collapse or None)
    print(f"wrote {dot.written}")
    return 0


def run_inspect(args) -> int:
    from graphc.inspect import inspect

    out = output_path(args, ".html")
    obj = None if args.file.endswith(".onnx") else graphc.load(args.file)
    if not isinstance(obj, graphc.Graph):        # keep a saved Graph's updates as updates
        obj = graphc.Graph(loaded_nodes(args.file))
    print(f"wrote {inspect(obj, out, title=os.path.basename(args.file))}")
    return 0


def output_path(args, suffix: str) -> str:
    """-o, or the input's name with `suffix`; never a file the command reads (`render g.json
    -o g.json` wrote graphviz's JSON over the saved graph: .json is one of its formats)."""
    out = args.output or os.path.splitext(args.file)[0] + suffix
    if args.file.endswith(".onnx"):
        read = [args.file]
    else:
        from graphc.io import file_paths
        read = [args.file, *file_paths(args.file)]
    for path in read:
        if os.path.exists(path) and os.path.exists(out) and os.path.samefile(path, out):
            raise graphc.GraphcError(f"the output {out} is {path}, which this command reads: "
                                     f"choose another name with -o")
    return out


def run_formula(args) -> int:
    print(graphc.explain(formula_labels(args.file), latex=args.latex))
    return 0


def formula_labels(path: str) -> dict:
    """label -> node: the outputs by name (or out0...), each update as `new VAR` (a training
    step's 27 updates were out1 ... out27, with no word of the variable each one writes)."""
    obj = loaded(path)                  # read once
    outputs = obj.outputs if isinstance(obj, graphc.Graph) else \
        [obj] if isinstance(obj, graphc.Node) else list(obj)
    pairs = [(n.name or f"out{k}", n) for k, n in enumerate(outputs)]
    if isinstance(obj, graphc.Graph):
        pairs += [(f"new {v.name or f'variable{k}'}", new)
                  for k, (v, new) in enumerate(obj.updates)]
    labels: dict = {}
    for k, (label, node) in enumerate(pairs):
        labels[label if label not in labels else f"{label} ({k})"] = node
    return labels


def run_demo(args) -> int:
    import numpy as np

    import graphc as gc
    from graphc import nn

    started = time.perf_counter()
    make_folder(args.out)            # before training: `--out FILE` failed after all the epochs
    (x_train, y_train), (x_test, y_test) = nn.data.load("digits", seed=args.seed)
    print(f"digits: {len(x_train)} training and {len(x_test)} test images of 8x8 pixels")
    model = nn.Sequential([nn.Dense(128, "relu"), nn.Dense(64, "relu"), nn.Dense(10)],
                          seed=args.seed)
    nn.fit(model, "softmax_cross_entropy", nn.Adam(1e-3), x_train, y_train,
           epochs=args.epochs, batch_size=32, validation_data=(x_test, y_test), seed=args.seed,
           verbose=0 if args.quiet else 1)
    print(model.summary())
    result = nn.evaluate(model, "softmax_cross_entropy", x_test, y_test)
    print(f"test accuracy {result['accuracy']:.2%} (loss {result['loss']:.4f}) after "
          f"{args.epochs} epochs, {time.perf_counter() - started:.1f} s")

    x = gc.placeholder((None, 64), "float32", name="x")
    y = gc.placeholder((None,), "int64", name="y")
    loss = nn.softmax_cross_entropy(model(x, training=False), y)
    grads = gc.grad(loss, model.params)           # W, b of each layer; the last two: dense_2
    write_pictures(args.out, loss, grads)
    write_formulas(args.out, {f"dL/d({p.name})": g for p, g in zip(model.params[-2:],
                                                                     grads[-2:])})
    saved = gc.save([loss] + list(grads), os.path.join(args.out, "mlp_graph"))
    print(f"wrote {saved}: try `graphc render {saved}`, `graphc inspect {saved}` and "
          f"`graphc formula {saved}`")
    return 0 if np.isfinite(result["loss"]) else 1


def make_folder(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise graphc.GraphcError(f"cannot make the output folder {path!r} "
                                 f"({e.strerror or e}): choose another with --out") from None


def missing(name: str) -> bool:
    if hasattr(graphc, name):
        return False
    print(f"(skipped: this graphc has no gc.{name} yet)")
    return True


def write_formulas(folder: str, grads) -> None:
    if missing("explain"):
        return
    text = graphc.explain(grads)     # a dict: label -> gradient node
    path = os.path.join(folder, "mlp_gradients.txt")
    with open(path, "w") as f:
        f.write(text + "\n")
    print(f"\ngradients of the last layer ({path}):\n{text}")


def write_pictures(folder: str, loss, grads) -> None:
    if missing("render"):
        return
    forward = os.path.join(folder, "mlp_forward.svg")
    backward = os.path.join(folder, "mlp_backward.svg")
    forward = graphc.render(loss, forward, backward=False).written
    backward = graphc.render([loss] + list(grads), backward, backward=True).written
    print(f"wrote {forward} and {backward}")


if __name__ == "__main__":
    sys.exit(main())
