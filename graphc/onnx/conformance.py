"""The conformance table: onnx's node test cases through import + gc.function, per op type.

    python3 -m graphc.onnx.conformance            # the table and the totals
    python3 -m graphc.onnx.conformance -v Resize  # cases whose name has 'resize', with reasons
"""
from __future__ import annotations

import argparse
import collections
import io
import warnings
from contextlib import redirect_stderr

from graphc.onnx.backend import OUT_OF_SCOPE, run_case


def node_cases():
    """onnx's node test cases, built in memory (no files, no network)."""
    from onnx.backend.test.loader import load_model_tests
    with warnings.catch_warnings(), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        return load_model_tests(kind="node")


def op_type(case) -> str:
    """The case's op type: its single op, or the op its name starts with for composites."""
    ops = sorted({n.op_type for n in case.model.graph.node})
    base = case.name[5:].removesuffix("_expanded")
    kind = ops[0] if len(ops) == 1 else next(
        (o for o in ops if base.replace("_", "").lower().startswith(o.lower())), "(composite)")
    return kind + (" (expanded)" if case.name.endswith("_expanded") else "")


def results(pattern: str = ""):
    """(case name, op type, status, detail) per case."""
    for case in node_cases():
        if pattern.lower() not in case.name.lower():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            status, detail = run_case(case.model, case.data_sets, case.rtol, case.atol)
        yield case.name, op_type(case), status, detail


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pattern", nargs="?", default="")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    table = collections.defaultdict(collections.Counter)
    families = collections.Counter()
    for name, op, status, detail in results(args.pattern):
        if status == "out of scope":
            families[detail] += 1
            continue
        table[op][status] += 1
        if args.verbose and status != "pass":
            print(f"{status:12} {name}: {detail[:300]}")
    print(f"{'op type':40} {'passed':>7} {'failed':>7} {'unsupp.':>7}")
    total = collections.Counter()
    for op in sorted(table):
        c = table[op]
        total.update(c)
        print(f"{op:40} {c['pass']:7} {c['fail']:7} {c['unsupported']:7}")
    in_scope = sum(total.values())
    print(f"\nin scope {in_scope}: passed {total['pass']}, failed {total['fail']}, "
          f"not supported {total['unsupported']}")
    print(f"out of scope {sum(families.values())}:")
    for fam, n in sorted(families.items()):
        print(f"  {fam:14} {n:4}  {OUT_OF_SCOPE[fam]}")
    print(f"all cases {in_scope + sum(families.values())}, passed {total['pass']}")


if __name__ == "__main__":
    main()
