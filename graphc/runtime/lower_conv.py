"""The convolution family's lowering: conv2d, its two gradients, max-pooling and its gradient
lower together, sharing per-plan state (workspaces, channels-last "shadows", pool pairs).

Each step gets its workspace; the weight gradient reuses the columns of the forward
convolution of the same input and weight. A channels-last convolution (wide input, or a narrow
one whose every reader is a max-pool or its gradient) keeps that copy of its result (a
"shadow"), so a max-pool of it, the pool's gradient and the convolution gradients after that
run along contiguous channel rows; each registers the shadow of its own result for the next.
When every reader of a result reads its shadow, the NCHW result is not written and the shadow
lives in that buffer (`nchw=False`). (Forcing other narrow convolutions channels-last costs
more in transposes than it saves.) A max-pool gradient reads its forward pool's result instead
of pooling again. A convolution read only by max-pools whose windows tile its result exactly,
their gradients and its own weight gradient is stored tiled (`tile`, conv.as_tiles): window
offset by offset, so pooling and its gradient are passes over whole contiguous blocks instead
of 6-D views with C-float inner loops, and the weight gradient's GEMM, a sum over all
positions, takes its columns in the same order (layer 1 at cnn_b64: ~2 ms less per step).
When those pools read only the top-left of the result (floor windows leave the last rows or
columns), only that part is computed (`crop`), and the convolution's gradients skip the
gradient's zero rim (conv2 at cnn_b64: 10x10 of 11x11).

A stride-1 3x3 convolution with enough channels (`winograd.pays`: a measured rule over the
shapes) runs all three steps by Winograd F(4x4, 3x3) instead (runtime/winograd.py): the
forward keeps the transformed input and filters in its workspace for the two gradients (as
its columns are kept), and the gradients reading one g share its transformed tiles (the
first step makes them, the second reuses them). Its result is channels-last, as a wide
im2col convolution's.
"""
from __future__ import annotations

from graphc.runtime import blas, conv, winograd

OPS = ("conv2d", "conv2d_grad_input", "conv2d_grad_weight", "max_pool2d", "max_pool2d_grad")


class ConvStack:
    """Per-plan state of the family."""

    def __init__(self):
        self.ws: dict[tuple, str] = {}        # (x, w, attrs) of a conv2d -> its workspace
        self.last: dict[str, bool] = {}       # workspace -> channels-last layout
        self.nhwc: dict[int, str] = {}        # node id -> expression of its shadow
        self.g_last: dict[int, str] = {}      # g id -> its shared channels-last copy
        self.top: dict[int, object] = {}      # pool gradient id -> its forward pool node
        self.wino: set[str] = set()           # workspaces of Winograd convolutions
        self.wino_g: dict[int, str] = {}      # g id -> its transformed tiles' shared dict
        self.pool: str | None = None          # the Winograd steps' shared scratch
        self.threads: int | None = None       # the BLAS's threads, asked once per plan
        self.users: dict | None = None        # the graph's readers, made at the first ask

    def before(self, low) -> None:
        pass

    def after(self, low, kinds: dict) -> None:
        """A max-pool gradient reads its forward step's result (an extra read)."""
        index = {id(n): i for i, n in enumerate(low.graph.nodes)}
        fwd = {(id(n.inputs[0]), repr(n.attrs)): n for n in low.graph.nodes
               if n.op == "max_pool2d" and kinds[id(n)] == "buffer"}
        for n in low.graph.nodes:
            f = fwd.get((id(n.inputs[1]), repr(n.attrs))) if n.op == "max_pool2d_grad" else None
            if f is not None and kinds[id(n)] == "buffer" and index[id(f)] < index[id(n)]:
                self.top[id(n)] = f
                low.extra_reads[id(n)] = (f,)

    # code ------------------------------------------------------------------------------
    def code(self, low, n, a: list[str], o: str) -> str:
        attrs = ", ".join(f"{k}={v!r}" for k, v in n.attrs.items())
        ws = low.const({})
        args = f"{', '.join(a)}, {attrs}, out={o}, ws={ws}"
        if n.op == "max_pool2d":
            x = self.nhwc.get(id(n.inputs[0]))
            if x is None:
                if low.layouts.get(id(n.inputs[0])):    # pooled channels-last by the kernel
                    self.nhwc[id(n)] = f'{ws}["nhwc"]'
                return f"xp.max_pool2d({args})"
            self.nhwc[id(n)] = f'{ws}["nhwc"]'
            return f"xp.max_pool2d({args}, shadow={x})"
        if n.op in ("conv2d", "conv2d_grad_input", "conv2d_grad_weight") \
                and self.uses_winograd(low, n):
            return self.winograd_code(low, n, a, o, ws)
        if n.op == "conv2d":
            only = self.only_shadow_readers(low, n)
            last = conv.wide(low.shapes[id(n.inputs[0])][0]) or only and self.pooled(low, n)
            self.ws[(id(n.inputs[0]), id(n.inputs[1]), repr(n.attrs))] = ws
            self.last[ws] = last
            if last:
                self.nhwc[id(n)] = f'{ws}["nhwc"]'
            crop = self.crop(low, n) if last and only else None
            tile = self.tile(low, n, crop) if last and only else None
            skip = ", nchw=False" if last and only else ""
            skip += f", tile={tile}" if tile else ""
            skip += f", crop={crop}" if crop else ""
            return f"xp.conv2d({args}, last={last}{skip})"
        if n.op == "conv2d_grad_weight":
            x, g, w = n.inputs
            gs = self.nhwc.get(id(g))
            fwd = self.ws.get((id(x), id(w), repr(n.attrs)))
            if fwd is not None:
                last = self.last[fwd]
                more = (f", gT={gs}" if gs is not None else self.shared_g(low, n, last)) \
                    if last else ""
                return f"xp.conv2d_grad_weight({', '.join(a)}, {attrs}, out={o}, ws={fwd}, " \
                       f"cols_ready=True, last={last}{more})"
            return f"xp.conv2d_grad_weight({args}{self.shared_g(low, n, None)})"
        if n.op == "conv2d_grad_input":
            gs = self.nhwc.get(id(n.inputs[0]))
            whole = ", chunks=False" if self.blas_threads() > 1 else ""
            return f"xp.conv2d_grad_input({args}, gT={gs}{whole})" if gs is not None \
                else f"xp.conv2d_grad_input({args}{self.shared_g(low, n, True)}{whole})"
        if n.op == "max_pool2d_grad" and id(n) in self.top:
            f = self.top[id(n)]
            x, t = self.nhwc.get(id(n.inputs[1])), self.nhwc.get(id(f))
            if x is not None and t is not None:
                self.nhwc[id(n)] = f'{ws}["nhwc"]'
                skip = ", nchw=False" if self.only_shadow_readers(low, n) else ""
                return f"xp.max_pool2d_grad({args}, top={low.var[id(f)]}, shadow={x}, " \
                       f"top_shadow={t}{skip})"
            return f"xp.max_pool2d_grad({args}, top={low.var[id(f)]})"
        return f"xp.{n.op}({args})"

    def uses_winograd(self, low, n) -> bool:
        """Winograd for this step of a convolution: `pays` for its input and filter shapes
        and the BLAS's thread count now (asked once per plan: the three steps of one
        convolution agree)."""
        shape = [low.shapes[id(x)][0] for x in n.inputs]
        x, w = {"conv2d": (0, 1), "conv2d_grad_input": (2, 1),
                "conv2d_grad_weight": (0, 2)}[n.op]
        return winograd.pays(shape[x], shape[w], n.attrs["stride"], n.attrs["padding"],
                             n.dtype, self.blas_threads())

    def blas_threads(self) -> int:
        """The BLAS's thread count, asked once per plan (so the steps of one plan agree)."""
        if self.threads is None:
            self.threads = blas.threads()
        return self.threads

    def winograd_code(self, low, n, a: list[str], o: str, ws: str) -> str:
        """The Winograd step: the forward registers its workspace (transforms kept) and its
        channels-last result; a gradient reads the forward's transforms when the plan has
        that forward earlier, and shares g's transformed tiles with the other gradient."""
        attrs = ", ".join(f"{k}={v!r}" for k, v in n.attrs.items())
        if self.pool is None:
            self.pool = low.const({})
        args = f"{', '.join(a)}, {attrs}, out={o}, ws={ws}, pool={self.pool}"
        if n.op == "conv2d":
            self.ws[(id(n.inputs[0]), id(n.inputs[1]), repr(n.attrs))] = ws
            self.last[ws] = True
            self.wino.add(ws)
            self.nhwc[id(n)] = f'{ws}["nhwc"]'
            skip = ", nchw=False" if self.only_shadow_readers(low, n) else ""
            return f"xp.winograd_conv2d({args}{skip})"
        x, w = (n.inputs[2], n.inputs[1]) if n.op == "conv2d_grad_input" \
            else (n.inputs[0], n.inputs[2])
        g = n.inputs[0] if n.op == "conv2d_grad_input" else n.inputs[1]
        fwd = self.ws.get((id(x), id(w), repr(n.attrs)))
        more = f", fwd={fwd}" if fwd in self.wino else ""
        if id(g) in self.wino_g:
            more += f", shared={self.wino_g[id(g)]}, fill=False"
        else:
            self.wino_g[id(g)] = low.const({})
            more += f", shared={self.wino_g[id(g)]}, fill=True"
        gs = self.nhwc.get(id(g))
        more += f", gT={gs}" if gs is not None else ""
        return f"xp.winograd_{n.op[len('conv2d_'):]}({args}{more})"

    def only_shadow_readers(self, low, n) -> bool:
        """Every step reading n reads its channels-last shadow instead (so n's NCHW buffer
        need not be written): pools of n, pool gradients at n with their forward pool, and
        the convolution gradients of g = n whose layout is channels-last."""
        g = low.graph
        if low.check or any(o is n for o in g.outputs) or any(u is n for _, u in g.updates):
            return False
        readers = self.readers(low, n)
        return bool(readers) and all(self.reads_shadow(low, m, n) for m in readers)

    def tile(self, low, n, crop) -> tuple | None:
        """The pooling window (p, q) when n's result may be stored tiled (conv.as_tiles: offset
        by offset, the pool and its gradient whole-block passes): every reader a max-pool
        whose windows tile the (cropped) result exactly (size = stride, dividing Ho and Wo)
        or that pool's gradient, each gradient read only by n's own weight gradient (which
        sums over all positions, so their order is free) and not written in NCHW order."""
        ho, wo = crop or low.shapes[id(n)][0][2:]
        sizes = set()
        for m in self.readers(low, n):
            size = tuple(m.attrs.get("size", ()))
            if m.op not in ("max_pool2d", "max_pool2d_grad") or len(size) != 2 \
                    or size != tuple(m.attrs["stride"]) or ho % size[0] or wo % size[1] \
                    or m.op == "max_pool2d_grad" and not self.grads_of(low, m, n, False):
                return None
            sizes.add(size)
        return sizes.pop() if len(sizes) == 1 else None

    def crop(self, low, n) -> tuple | None:
        """The top-left (Ho, Wo) of n's result that its readers read, when that is not all of
        it (pools drop the last rows or columns that fill no window): every reader a max-pool
        or that pool's gradient, each gradient read only by n's own weight and input
        gradients, which then skip its zero rim (fewer GEMM rows, a smaller im2col and
        col2im: 17 % of conv2's work at cnn_b64, 11x11 pooled by 2x2 windows)."""
        ho, wo = low.shapes[id(n)][0][2:]
        need = (0, 0)
        for m in self.readers(low, n):
            if m.op not in ("max_pool2d", "max_pool2d_grad") \
                    or m.op == "max_pool2d_grad" and not self.grads_of(low, m, n, True):
                return None
            (kh, kw), (sh, sw) = m.attrs["size"], m.attrs["stride"]
            need = (max(need[0], (ho - kh) // sh * sh + kh),
                    max(need[1], (wo - kw) // sw * sw + kw))
        return need if need != (ho, wo) else None

    def grads_of(self, low, m, n, inputs: bool) -> bool:
        """Pool gradient m (of n's result) is read only channels-last and only by n's weight
        gradient (or its input gradient too when `inputs`)."""
        x, w = n.inputs
        return self.only_shadow_readers(low, m) and all(
            u.attrs == n.attrs and (
                u.op == "conv2d_grad_weight" and u.inputs[0] is x and u.inputs[2] is w
                or inputs and u.op == "conv2d_grad_input" and u.inputs[1] is w
                and u.inputs[2] is x) for u in self.readers(low, m))

    def readers(self, low, n) -> list:
        """The nodes reading n (one table per plan: a walk of the graph per ask was
        quadratic in a graph of many convolutions)."""
        if self.users is None:
            self.users = low.graph.users()
        return self.users[id(n)]

    def pooled(self, low, n) -> bool:
        """n is max-pooled: a narrow convolution then runs channels-last too, since pooling
        and its gradient along contiguous channel rows save more than its im2col costs."""
        return any(m.op == "max_pool2d" and m.inputs[0] is n for m in low.graph.nodes)

    def reads_shadow(self, low, m, n) -> bool:
        if low.kinds_of.get(id(m)) != "buffer":
            return False
        pos = [k for k, x in enumerate(m.inputs) if x is n]
        if m.op == "max_pool2d":
            return True
        if m.op == "max_pool2d_grad":
            return pos == [1] and id(m) in self.top
        if m.op == "conv2d_grad_input":
            return pos == [0]
        if m.op == "conv2d_grad_weight":
            fwd = self.ws.get((id(m.inputs[0]), id(m.inputs[2]), repr(m.attrs)))
            return pos == [1] and fwd is not None and self.last[fwd]
        return False

    def shared_g(self, low, n, last) -> str:
        """The input and weight gradients of a convolution that read the same g share its
        channels-last copy: the first step makes it, the second reuses it. last: the layout
        of a weight gradient (None: decided by its input's width)."""
        g = n.inputs[0] if n.op == "conv2d_grad_input" else n.inputs[1]
        if last is None:
            last = conv.wide(low.shapes[id(n.inputs[0])][0])
        if not last:
            return ""                       # this path does not use the copy
        if id(g) in self.g_last:
            return f", shared={self.g_last[id(g)]}, fill=False"
        self.g_last[id(g)] = low.const({})
        return f", shared={self.g_last[id(g)]}, fill=True"
