"""Code templates: how one node becomes NumPy code that writes into a given buffer.

`UFUNC` maps an elementwise op to the statements that compute it into `{o}` from `{0}`, `{1}`..
Every template reads each input before it first writes `{o}`, or reads it only through `{o}`;
`INPLACE_OK` lists the ops where the output may share memory with an input. `{half}`, `{one}`,
`{zero}` are 0-d arrays of the op's dtype (a Python scalar operand costs NumPy a conversion).
"""
from __future__ import annotations

UFUNC = {
    "add": "np.add({0}, {1}, out={o})",
    "sub": "np.subtract({0}, {1}, out={o})",
    "mul": "np.multiply({0}, {1}, out={o})",
    "div": "np.divide({0}, {1}, out={o})",
    "neg": "np.negative({0}, out={o})",
    "pow": "np.power({0}, {1}, out={o})",
    "exp": "np.exp({0}, out={o})",
    "log": "np.log({0}, out={o})",
    "sqrt": "np.sqrt({0}, out={o})",
    "abs": "np.absolute({0}, out={o})",
    "sign": "np.sign({0}, out={o})",
    "tanh": "np.tanh({0}, out={o})",
    "sigmoid": "np.multiply({0}, {half}, out={o}); np.tanh({o}, out={o}); "
               "np.add({o}, {one}, out={o}); np.multiply({o}, {half}, out={o})",
    "relu": "np.maximum({0}, 0, out={o})",
    "softplus": "np.logaddexp({zero}, {0}, out={o})",
    "maximum": "np.maximum({0}, {1}, out={o})",
    "minimum": "np.minimum({0}, {1}, out={o})",
    "greater": "np.greater({0}, {1}, out={o})",
    "greater_equal": "np.greater_equal({0}, {1}, out={o})",
    "less": "np.less({0}, {1}, out={o})",
    "less_equal": "np.less_equal({0}, {1}, out={o})",
    "equal": "np.equal({0}, {1}, out={o})",
    "logical_not": "np.logical_not({0}, out={o})",
    "where": "np.copyto({o}, {2}); np.copyto({o}, {1}, where={0})",
    "cast": "np.copyto({o}, {0}, casting='unsafe')",
}

# ops whose template may write {o} while {o} is one of the inputs (pure elementwise passes)
INPLACE_OK = set(UFUNC) - {"where", "cast"}

# activations applied in place to a buffer (the dense epilogue)
ACTIVATE = {
    None: "",
    "relu": "np.maximum({o}, 0, out={o})",
    "sigmoid": UFUNC["sigmoid"].replace("{0}", "{o}"),
    "tanh": "np.tanh({o}, out={o})",
}


def ufunc_ok(node, in_dtypes) -> bool:
    """Whether the template computes exactly what the kernel does (same dtypes throughout)."""
    if node.op not in UFUNC:
        return False
    if node.op in ("greater", "greater_equal", "less", "less_equal", "equal", "logical_not"):
        return len(set(in_dtypes)) == 1
    if node.op == "where":
        return all(d == node.dtype for d in in_dtypes[1:])
    if node.op == "cast":
        return True
    return all(d == node.dtype for d in in_dtypes)


def ufunc(op: str, args: list[str], o: str, scalars: dict) -> str:
    return UFUNC[op].format(*args, o=o, **scalars)
