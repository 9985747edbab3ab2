"""The one namespace generated code reaches arrays through: `xp.matmul(...)`, `xp.exp(...)`,
`xp.sce_forward(...)`, `xp.conv2d(...)`.

NumPy today: `xp` holds NumPy's ufuncs, the few other NumPy functions the templates name, and
the runtime's own kernels (fused softmax cross-entropy, convolution and pooling). A second
array backend is one more namespace with the same names. Looking a name up in it costs what
`np.matmul` costs (one dict lookup on a plain namespace); nothing is wrapped.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from graphc.runtime import blas, conv, kernels, winograd

NAME = "xp"          # the name the generated code reads it by

# the NumPy functions the templates name besides ufuncs
FUNCTIONS = ("array", "broadcast_to", "copyto", "empty")

# the runtime's kernels, called as xp.<name>; a standalone export inlines their source
KERNELS = (kernels.sce_forward, kernels.sce_backward, conv.conv2d,
           conv.conv2d_grad_weight, conv.conv2d_grad_input, conv.max_pool2d, conv.max_pool2d_grad,
           winograd.winograd_conv2d, winograd.winograd_grad_input,
           winograd.winograd_grad_weight, blas.gemm, blas.gemv)


def numpy_namespace() -> SimpleNamespace:
    names = {k: v for k, v in vars(np).items() if isinstance(v, np.ufunc)}
    names.update({k: getattr(np, k) for k in FUNCTIONS})
    for f in KERNELS:
        assert f.__name__ not in names, f"kernel {f.__name__} shadows a NumPy name"
        names[f.__name__] = f
    return SimpleNamespace(**names)


xp = numpy_namespace()
