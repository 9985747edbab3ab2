"""Op table rows for tan and the inverse and hyperbolic functions."""
import numpy as np

import graphc as gc
from tests.helpers import Row

rng = np.random.default_rng(4)
inside = rng.uniform(-0.8, 0.8, size=(2, 3))        # the domain of arcsin, arccos, arctanh
wide = rng.uniform(-2.0, 2.0, size=(2, 3))
above = rng.uniform(1.2, 3.0, size=(4,))            # arccosh needs x > 1

ROWS = [
    Row("tan", gc.tan, [inside], np.tan),
    Row("arcsin", gc.arcsin, [inside], np.arcsin),
    Row("arccos", gc.arccos, [inside], np.arccos),
    Row("arctan", gc.arctan, [wide], np.arctan),
    Row("sinh", gc.sinh, [wide], np.sinh),
    Row("cosh", gc.cosh, [wide], np.cosh),
    Row("arcsinh", gc.arcsinh, [wide], np.arcsinh),
    Row("arccosh", gc.arccosh, [above], np.arccosh),
    Row("arctanh", gc.arctanh, [inside], np.arctanh),
]


def test_formulas_use_sympy_functions():
    x = gc.placeholder((), "float64", name="x")
    assert "asinh" in str(gc.formula(gc.arcsinh(x)))
