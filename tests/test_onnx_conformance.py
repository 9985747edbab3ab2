"""onnx's own node test cases (onnx.backend.test, built in memory) through import +
gc.function. Out-of-scope families and unsupported ops are skipped with their reason; every
other case must match onnx's expected outputs (a failure is a bug, never a silent pass).
The table per op type: `python3 -m graphc.onnx.conformance`."""
import collections

import pytest

pytest.importorskip("onnx")

from graphc.onnx.backend import KNOWN_FAILURES, OUT_OF_SCOPE, run_case  # noqa: E402
from graphc.onnx.conformance import node_cases  # noqa: E402

CASES = node_cases()
SEEN: collections.Counter = collections.Counter()
MIN_PASSING = 1530          # 1,533 pass today (of 1,884; the table is in the README)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_node_case(case):
    status, detail = run_case(case.model, case.data_sets, case.rtol, case.atol)
    SEEN[status] += 1
    if status == "out of scope":
        pytest.skip(f"out of scope ({detail}): {OUT_OF_SCOPE[detail]}")
    if status == "unsupported":
        pytest.skip(f"not supported: {detail}")
    if case.name in KNOWN_FAILURES:
        assert status == "fail", f"{case.name} passes now: drop it from KNOWN_FAILURES"
        pytest.xfail(KNOWN_FAILURES[case.name])
    assert status == "pass", detail


def test_enough_cases_pass():
    """A case that silently turned 'unsupported' would only be skipped: count the passes."""
    if sum(SEEN.values()) < len(CASES):
        pytest.skip("only part of the cases ran (-k or -x)")
    assert SEEN["pass"] >= MIN_PASSING, dict(SEEN)
