"""The sympy objects formulas are made of: σ, functions applied to every entry of a matrix,
broadcasting, row/column sums, ops with no matrix form, and a readable text printer.
"""
from __future__ import annotations

import json

import sympy as sp
from sympy.printing.precedence import PRECEDENCE, precedence
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter

from graphc.ir import OPS
from graphc.ops.forms import mathml_call, sigmoid  # noqa: F401  (formula reads sigmoid here)

INFIX = {"greater": ">", "greater_equal": ">=", "less": "<", "less_equal": "<=",
         "equal": "=="}
TEX_INFIX = {"greater": ">", "greater_equal": r"\geq", "less": "<", "less_equal": r"\leq",
             "equal": "="}


def as_symbol(name) -> sp.Symbol:
    return sp.Symbol(name) if isinstance(name, str) else name   # doit() passes the Symbol


def labelled(op: str, attrs: dict) -> str:
    """An op's name with its attributes, `slice[axis=1, start=0, stop=3]`: an op known to
    formulas only by name must not make x[:, :3] and x[:, 3:] one function (their
    difference would be 0)."""
    if not attrs:
        return op
    return f"{op}[{', '.join(f'{k}={short(v)}' for k, v in attrs.items())}]"


# sympy writes a function's name into MathML and LaTeX as it is: no markup characters in it
PLAIN = str.maketrans({"<": "⟨", ">": "⟩", "&": "+", "{": "(", "}": ")", "%": "pct",
                       "#": "no.", "$": "S", "\\": "/", "^": "**", "~": "-"})


def short(value, width: int = 48) -> str:
    """An attribute as plain text, a long one (a loop body's op list) cut at `width`."""
    text = repr(value).translate(PLAIN)
    return text if len(text) <= width else text[:width - 2] + "…" + text[-1]


class Elementwise(sp.MatrixExpr):
    """A function applied to every entry of equally shaped matrices: f∘(A, B). The op's
    attributes ride along (as JSON in a symbol), so f's entries and name keep them."""

    def __new__(cls, name: str, attrs, *args):
        if isinstance(attrs, dict):
            attrs = json.dumps(attrs, sort_keys=True)
        return sp.Basic.__new__(cls, as_symbol(name), as_symbol(attrs), *args)

    @property
    def shape(self):
        """Found once: sympy's MatMul asks its first and last factor for the shape apart
        (rows, then cols), so an uncached shape of a deep chain doubled per level."""
        try:
            return self._shape
        except AttributeError:
            self._shape = next(a.shape for a in self.args[2:] if isinstance(a, sp.MatrixExpr))
            return self._shape

    def doit(self, **hints):
        return self      # see Opaque.doit

    @property
    def attrs(self) -> dict:
        return json.loads(str(self.args[1]))

    @property
    def label(self) -> str:
        return labelled(str(self.args[0]), self.attrs)

    def _entry(self, i, j, **kwargs):
        entries = [a._entry(i, j) if isinstance(a, sp.MatrixExpr) else a for a in self.args[2:]]
        return scalar_sym(str(self.args[0]), entries, self.attrs)

    def _sympystr(self, printer):
        args = [printer._print(a) for a in self.args[2:]]
        if str(self.args[0]) in INFIX:
            return f"{args[0]} {INFIX[str(self.args[0])]} {args[1]}"
        return f"{self.label}({', '.join(args)})"

    def _mathml_presentation(self, printer):
        name = str(self.args[0])
        if name in INFIX:
            row = printer.dom.createElement("mrow")
            mo = printer.dom.createElement("mo")
            mo.appendChild(printer.dom.createTextNode(INFIX[name]))
            for part in (printer._print(self.args[2]), mo, printer._print(self.args[3])):
                row.appendChild(part)
            return row
        return mathml_call(printer, "σ" if name == "sigmoid" else self.label, self.args[2:])

    def _latex(self, printer):
        if str(self.args[0]) in INFIX:
            a, b = [printer._print(a) for a in self.args[2:]]
            return r"\left[%s %s %s\right]" % (a, TEX_INFIX[str(self.args[0])], b)
        name = r"\sigma" if str(self.args[0]) == "sigmoid" else \
            r"\operatorname{%s}" % self.label.replace("_", r"\_")
        return r"%s\left(%s\right)" % (name, ", ".join(printer._print(a) for a in self.args[2:]))


class Opaque(sp.MatrixExpr):
    """An op with no matrix form here (softmax, conv2d, ...), shown as op(args)."""

    def __new__(cls, name: str, rows, cols, *args):
        return sp.Basic.__new__(cls, as_symbol(name), sp.sympify(rows), sp.sympify(cols), *args)

    shape = property(lambda self: (self.args[1], self.args[2]))

    def doit(self, **hints):
        """Itself: its arguments were made canonical when it was built. sympy's `A + B` and
        `c * A` call doit() on the whole tree below, and each MatAdd there does `c * A`
        again, so a chain of 30 elementwise ops took minutes (twice the work per level)."""
        return self

    def _sympystr(self, printer):
        return f"{self.args[0]}({', '.join(printer._print(a) for a in self.args[3:])})"

    def _mathml_presentation(self, printer):
        return mathml_call(printer, str(self.args[0]), self.args[3:])

    def _latex(self, printer):
        return r"\operatorname{%s}\left(%s\right)" % (
            str(self.args[0]).replace("_", r"\_"),
            ", ".join(printer._print(a) for a in self.args[3:]))


class Broadcast(sp.MatrixExpr):
    """A scalar, row or column repeated to an r x c matrix; printed as itself (x·W + b)."""

    def __new__(cls, x, rows, cols):
        while isinstance(x, Broadcast):      # a broadcast of a broadcast repeats the original
            x = x.args[0]
        return sp.Basic.__new__(cls, sp.sympify(x), sp.sympify(rows), sp.sympify(cols))

    shape = property(lambda self: (self.args[1], self.args[2]))

    def doit(self, **hints):
        return self      # see Opaque.doit

    def _entry(self, i, j, **kwargs):
        x = self.args[0]
        if not isinstance(x, sp.MatrixExpr):
            return x
        return x._entry(0 if x.shape[0] == 1 else i, 0 if x.shape[1] == 1 else j)

    def _sympystr(self, printer):
        return printer._print(self.args[0])

    def _mathml_presentation(self, printer):
        return printer._print(self.args[0])

    def _latex(self, printer):
        return printer._print(self.args[0])


class Sum(sp.MatrixExpr):
    """Sum over the rows (axis 0: a row) or the columns (axis 1: a column) of a matrix."""

    def __new__(cls, x, axis):
        return sp.Basic.__new__(cls, x, sp.Integer(axis))

    @property
    def shape(self):
        r, c = self.args[0].shape
        return (sp.Integer(1), c) if self.args[1] == 0 else (r, sp.Integer(1))

    def _entry(self, i, j, **kwargs):
        x, axis = self.args
        if axis == 0:
            return sp.Add(*[x._entry(k, j) for k in range(int(x.shape[0]))])
        return sp.Add(*[x._entry(i, k) for k in range(int(x.shape[1]))])

    def _sympystr(self, printer):
        return f"sum({printer._print(self.args[0])}, axis={self.args[1]})"

    def _mathml_presentation(self, printer):
        return mathml_call(printer, f"sum_axis{self.args[1]}", [self.args[0]])

    def _latex(self, printer):
        x = printer._print(self.args[0])
        return (r"\mathbf{1}^\top %s" if self.args[1] == 0 else r"%s \mathbf{1}") % x


# scalar meaning of one op ---------------------------------------------------------------

def scalar_sym(op: str, args: list, attrs: dict):
    """The op's scalar formula from its OpDef.sym; an undefined function when it has none."""
    opdef = OPS.get(op)
    out = None
    if opdef is not None and opdef.sym is not None:
        try:
            out = opdef.sym(*args, **attrs)
        except TypeError:
            out = None
    return out if out is not None else sp.Function(labelled(op, attrs))(*args)


def is_scalar_broadcast(e) -> bool:
    return isinstance(e, Broadcast) and not isinstance(e.args[0], sp.MatrixExpr)


def positive_first(terms) -> list:
    """Terms of a sum with subtracted ones last: σ(z) - y rather than -y + σ(z)."""
    terms = list(terms)
    return [t for t in terms if not t.could_extract_minus_sign()] + \
        [t for t in terms if t.could_extract_minus_sign()]


class TextPrinter(StrPrinter):
    """sympy's text form with matrix products as ·, Hadamard products as ∘, transposes as ᵀ."""

    def _as_ordered_terms(self, expr, order=None):
        return positive_first(super()._as_ordered_terms(expr, order=order))

    def _print_MatMul(self, expr):
        return super()._print_MatMul(expr).replace("*", "·")

    def _print_HadamardProduct(self, expr):
        return " ∘ ".join(self.parenthesize(a, precedence(expr)) for a in expr.args)

    def _print_HadamardPower(self, expr):
        return f"{self.parenthesize(expr.base, PRECEDENCE['Pow'])}^∘{self._print(expr.exp)}"

    def _print_Transpose(self, expr):
        return self.parenthesize(expr.arg, PRECEDENCE["Pow"]) + "ᵀ"


class TexPrinter(LatexPrinter):
    """sympy's LaTeX with subtracted terms last."""

    def _as_ordered_terms(self, expr, order=None):
        return positive_first(super()._as_ordered_terms(expr, order=order))


def text(expr) -> str:
    """A formula as one line of readable text."""
    return TextPrinter().doprint(expr)


def tex(expr) -> str:
    """A formula as LaTeX."""
    return TexPrinter().doprint(expr)
