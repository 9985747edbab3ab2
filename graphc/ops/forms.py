"""Sympy functions the ops declare as their forms where sympy has none: σ, kept whole.

They sit with the ops (not in graphc.symbolic, above them) so an op's sympy form is declared
once, in its OpDef, and every reader (formula, fused bodies, tests) gets the same one.
"""
from __future__ import annotations

import numpy as np
import sympy as sp


def mathml_call(printer, name: str, args) -> object:
    """`name(a, b)` as presentation MathML (for the inspector; browsers draw it unscripted)."""
    dom = printer.dom
    row = dom.createElement("mrow")
    head = dom.createElement("mi")
    head.appendChild(dom.createTextNode(name))
    row.appendChild(head)
    for k, part in enumerate(["("] + [a for pair in zip(args, [","] * len(args))
                                       for a in pair][:-1] + [")"] if args else ["(", ")"]):
        if isinstance(part, str):
            mo = dom.createElement("mo")
            mo.appendChild(dom.createTextNode(part))
            row.appendChild(mo)
        else:
            row.appendChild(printer._print(part))
    return row


class sigmoid(sp.Function):   # noqa: N801  (reads like the op)
    """σ(x) = 1 / (1 + exp(-x)), kept whole so derivatives read σ(x)(1 − σ(x))."""
    _imp_ = staticmethod(lambda x: 1 / (1 + np.exp(-x)))     # what lambdify computes

    def fdiff(self, argindex=1):
        return self * (1 - self)

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return 1 / (1 + sp.exp(-x))

    def _eval_evalf(self, prec):
        return self.rewrite(sp.exp)._eval_evalf(prec)

    def _mathml_presentation(self, printer):
        return mathml_call(printer, "σ", self.args)

    def _latex(self, printer, exp=None):
        tex = r"\sigma\left(%s\right)" % printer._print(self.args[0])
        return tex if exp is None else r"%s^{%s}" % (tex, exp)
