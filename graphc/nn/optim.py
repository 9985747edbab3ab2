"""Optimizers as update graphs: `.updates(loss, params)` returns (variable, new value) pairs.

The gradients come from gc.grad and the optimizer's state (velocities, moments, the step
count) lives in variables updated by the same pairs, so one compiled call
`gc.function(inputs, loss, updates=opt.updates(loss, params))` is a whole training step.
`lr` may be a float or a scalar node (e.g. a variable you change between epochs).
The state belongs to the optimizer and its parameters, as in PyTorch and Keras: another call
of `updates` (a second `fit`) over the same parameters continues from it, so training that is
stopped, saved (`save_params(optimizer)`) and resumed computes what it would have computed.

Parameters in float16 keep their state (moments, velocities, the step count) in float32 and
get their update computed in float32, then rounded to float16: Adam's eps = 1e-8 and a squared
gradient below 6e-8 are 0 in float16, which would divide 0 by 0 from the second step.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

import graphc as gc
from graphc.ir import GraphcError, Node
from graphc.nn.module import hyper
from graphc.scope import user_line

Updates = list[tuple[Node, Node]]


class Optimizer:
    """Base class: `update(p, g)` returns the pairs for one parameter."""
    kind = "optimizer"

    def __init__(self, lr):
        name = type(self).__name__
        if not isinstance(lr, Node):          # a scalar node: a schedule the user assigns
            hyper(lr, f"{name}: lr")
        elif lr.shape != () or lr.dtype.kind != "f":
            raise GraphcError(f"{name}: lr must be a float scalar node, got "
                              f"{lr.dtype.name} {lr.shape} (built at {lr.where})")
        self.lr = lr
        self.variables: list[Node] = []     # the state of the last `updates` call
        self.slots: dict[tuple[int, str], tuple[Node, Node]] = {}   # (id(p), what) -> (p, var)
        self.built = False                  # `build` or `updates` ran: its state exists

    def updates(self, loss: Node, params: Sequence[Node]) -> Updates:
        """Update pairs for one training step on `loss`; a parameter seen by an earlier call
        keeps its state (velocities, moments, Adam's step count) from it."""
        params = self.checked(params, "updates")
        grads = gc.grad(loss, params)
        return self.pairs(params, grads)

    def build(self, params: Sequence[Node]) -> list[Node]:
        """The state variables of `params`, made now (no loss needed), so that
        `load_params(optimizer, path)` can fill them before a resumed `fit` uses them."""
        params = self.checked(params, "build")
        self.pairs(params, [gc.zeros_like(p) for p in params])
        return self.variables

    def checked(self, params, what: str) -> list[Node]:
        """A list of distinct float variables: one variable, or a model (its params, as
        torch.optim.Adam(model.parameters())) was a TypeError, a variable given twice made
        two updates of it, an int variable failed in grad without the line."""
        name = f"{type(self).__name__}.{what}"
        if isinstance(params, Node):
            params = [params]
        elif hasattr(params, "params") and not isinstance(params, (list, tuple)):
            params = params.params
        try:
            params = list(params)
        except TypeError:
            raise GraphcError(f"{name}: parameters must be a list of variables, got "
                              f"{type(params).__name__}\n  at {user_line()}") from None
        if not params:
            raise GraphcError(f"{type(self).__name__}.{what}: no parameters to train "
                              f"(call the model on an input first)\n  at {user_line()}")
        for p in params:
            if not isinstance(p, Node) or p.op != "variable":
                raise GraphcError(f"{type(self).__name__}.{what}: parameters must be "
                                  f"variables, got {p!r}\n  at {user_line()}")
            if p.dtype.kind != "f":
                raise GraphcError(f"{name}: parameter {p.label()} is {p.dtype.name}; only "
                                  f"float variables are trained\n  at {user_line()}")
        if len({id(p) for p in params}) < len(params):
            twice = next(p for k, p in enumerate(params) if any(p is q for q in params[:k]))
            raise GraphcError(f"{name}: parameter {twice.label()} is given twice\n"
                              f"  at {user_line()}")
        return params

    def pairs(self, params: list[Node], grads: list[Node]) -> Updates:
        """Every parameter's update pairs from its gradient; self.variables: their state."""
        self.variables, self.built = [], True
        with gc.name_scope(self.kind):
            pairs = self.start(params)
            for p, g in zip(params, grads):
                if g.dtype != state_dtype(p.dtype):
                    g = gc.cast(g, state_dtype(p.dtype))
                pairs += self.update(p, g)
            # a hyper-parameter node of another dtype (lr = gc.variable(0.01) is float64)
            # must not change the dtype of what it updates
            pairs = [(v, new if new.dtype == v.dtype else gc.cast(new, v.dtype))
                     for v, new in pairs]
        return pairs

    def __getstate__(self) -> dict:
        """The slots without their keys: id(p) is another number in a copy (copy.deepcopy
        of (model, optimizer), a pickle), which then found no state, restarted every moment
        at zero and went on with Adam's step count."""
        state = dict(self.__dict__)
        state["slots"] = [(what, p, var) for (_, what), (p, var) in self.slots.items()]
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        state["slots"] = {(id(p), what): (p, var) for what, p, var in state["slots"]}
        self.__dict__.update(state)

    def start(self, params: list[Node]) -> Updates:
        """Pairs shared by every parameter (e.g. Adam's step count)."""
        return []

    def update(self, p: Node, g: Node) -> Updates:
        raise NotImplementedError

    def slot(self, p: Node, what: str) -> Node:
        """A state variable shaped like p, starting at zero (p's own from an earlier call:
        a fresh one would restart momentum and Adam's moments at every `fit`)."""
        held = self.slots.get((id(p), what))
        if held is not None and held[0] is p:
            var = held[1]
        else:
            var = gc.variable(np.zeros(p.shape, state_dtype(p.dtype)),
                              name=f"{p.name or 'param'}/{what}")
            self.slots[(id(p), what)] = (p, var)     # p held: its id is not reused
        self.variables.append(var)
        return var


def state_dtype(dtype: np.dtype) -> np.dtype:
    """Where an optimizer keeps a parameter's state: float32 at least (float64 stays)."""
    return np.promote_types(dtype, np.float32) if dtype.kind == "f" else np.dtype(np.float32)


class SGD(Optimizer):
    """v <- momentum * v - lr * g;  p <- p + v  (plain p <- p - lr * g when momentum is 0)."""
    kind = "sgd"

    def __init__(self, lr=0.01, momentum: float = 0.0):
        super().__init__(lr)
        self.momentum = hyper(momentum, "SGD: momentum")

    def update(self, p, g):
        if self.momentum == 0.0:
            return [(p, p - self.lr * g)]
        v = self.slot(p, "velocity")
        v_new = self.momentum * v - self.lr * g
        return [(v, v_new), (p, p + v_new)]


class RMSProp(Optimizer):
    """s <- rho * s + (1 - rho) * g^2;  p <- p - lr * g / (sqrt(s) + eps)."""
    kind = "rmsprop"

    def __init__(self, lr=1e-3, rho: float = 0.9, eps: float = 1e-7):
        super().__init__(lr)
        self.rho, self.eps = hyper(rho, "RMSProp: rho", 0, 1), hyper(eps, "RMSProp: eps")

    def update(self, p, g):
        s = self.slot(p, "square")
        s_new = self.rho * s + (1 - self.rho) * (g * g)
        return [(s, s_new), (p, p - self.lr * g / (gc.sqrt(s_new) + self.eps))]


class Adam(Optimizer):
    """Adam with bias correction: m, v moving averages of g and g^2, t the step count."""
    kind = "adam"

    def __init__(self, lr=1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        super().__init__(lr)
        self.beta1 = hyper(beta1, "Adam: beta1", 0, 1)
        self.beta2 = hyper(beta2, "Adam: beta2", 0, 1)
        self.eps = hyper(eps, "Adam: eps")

    def start(self, params):
        dtype = np.result_type(*[state_dtype(p.dtype) for p in params])
        if getattr(self, "t", None) is None or self.t.dtype != dtype:
            self.t = gc.variable(np.zeros((), dtype), name="adam/t")
        self.variables.append(self.t)
        self.t_new = self.t + 1.0
        self.correction1 = 1.0 - self.beta1 ** self.t_new
        self.correction2 = 1.0 - self.beta2 ** self.t_new
        return [(self.t, self.t_new)]

    def update(self, p, g):
        m, v = self.slot(p, "m"), self.slot(p, "v")
        m_new = self.beta1 * m + (1 - self.beta1) * g
        v_new = self.beta2 * v + (1 - self.beta2) * (g * g)
        step = self.lr * (m_new / self.correction1) / (gc.sqrt(v_new / self.correction2)
                                                        + self.eps)
        return [(m, m_new), (v, v_new), (p, p - step)]


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "rmsprop": RMSProp}
