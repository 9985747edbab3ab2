"""graphc: a symbolic graph compiler for static computation graphs, on NumPy."""
from graphc.ir import Graph, GraphcError, Node, ShapeError  # noqa: F401
from graphc.api import *  # noqa: F401,F403
from graphc.autodiff import check_grad, grad, hessian, jacobian, jvp, vjp  # noqa: F401
from graphc.scan import scan  # noqa: F401
from graphc.passes import optimize  # noqa: F401
from graphc.runtime import Function, function  # noqa
from graphc.io import save, load  # noqa: F401
from graphc.viz import render  # noqa: F401
from graphc.viz import repr_svg as _repr_svg
from graphc.ir import DRAW as _DRAW
_DRAW.append(_repr_svg)      # nodes, graphs and Functions draw with viz, which sits above them
from graphc.formula import formula  # noqa: F401
from graphc.explain import explain  # noqa: F401
from graphc.inspect import inspect  # noqa: F401
from graphc import nn  # noqa: F401,E402  (gc.nn.Dense without a second import)

__version__ = "0.1.0"
