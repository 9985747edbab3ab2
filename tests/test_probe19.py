"""Probe of the channels-last buffers, the rewrite guards, the ReLU gradient's finite guard and
the fused groups (helper "probe19"): a seeded differential generator of graphs mixing conv,
pool, reshape/transpose, elementwise, reductions, matmul and updates (every compiled mode vs
the interpreter), and one test per bug it (or a hand probe) found.

GRAPHC_PROBE19=N runs N random graphs (`python3 -m pytest tests/test_probe19.py -k campaign`).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import graphc as gc
from graphc import GraphcError
from graphc.ir import evaluate

CAMPAIGN = int(os.environ.get("GRAPHC_PROBE19", "0"))
MODES = [(True, False), (False, False), (True, True)]      # optimize, check_numerics


# the generator --------------------------------------------------------------------------

class Gen:
    """One random graph over an image placeholder (None, C, H, W): conv/pool chains read by
    every kind of reader, a scalar loss, its gradients, outputs and updates."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        r = self.rng
        self.dtype = str(r.choice(["float64", "float64", "float32"]))
        c, h, w = int(r.choice([1, 2, 3, 8, 9])), int(r.integers(4, 10)), int(r.integers(4, 10))
        self.x = gc.placeholder((None, c, h, w), self.dtype, name="x")
        self.vars: list = []
        self.pool4: list = [self.x]          # 4-D values
        self.other: list = []                # other float values
        self.log: list[str] = []
        self.chain = bool(r.random() < 0.6)

    def var(self, shape, scale=0.5):
        v = gc.variable((self.rng.standard_normal(shape) * scale).astype(self.dtype),
                        name=f"v{len(self.vars)}")
        self.vars.append(v)
        return v

    def any4(self):
        """Mostly the latest value (CNN-like chains, whose buffers go channels-last), now and
        then any earlier one (a value read twice)."""
        if self.chain and self.rng.random() < 0.7:
            return self.pool4[-1]
        return self.pool4[int(self.rng.integers(len(self.pool4)))]

    def step(self):
        r = self.rng
        a = self.any4()
        n, c, h, w = a.shape
        kind = str(r.choice(["conv", "conv", "maxpool", "maxpool", "avgpool", "relu", "bias",
                             "add", "mul", "transpose", "reshape", "slice", "concat", "reduce",
                             "matmul", "tanh", "where", "pad"]))
        out = None
        try:
            if kind == "conv":
                k = int(r.integers(1, 4))
                co = int(r.choice([1, 2, 4, 8, 9]))
                out = gc.conv2d(a, self.var((co, c, k, k)), stride=int(r.integers(1, 3)),
                                padding=int(r.integers(0, 3)))
            elif kind == "maxpool":
                s = int(r.integers(1, 4))
                out = gc.max_pool2d(a, s, None if r.random() < 0.5 else int(r.integers(1, 4)))
            elif kind == "avgpool":
                s = int(r.integers(1, 4))
                out = gc.avg_pool2d(a, s, None if r.random() < 0.5 else int(r.integers(1, 4)))
            elif kind == "relu":
                out = gc.relu(a)
            elif kind == "bias":
                out = a + self.var((1, c, 1, 1))
            elif kind == "tanh":
                out = gc.tanh(a)
            elif kind == "add":
                same = [b for b in self.pool4 if b.shape == a.shape]
                b = same[int(r.integers(len(same)))]
                out = a + b if r.random() < 0.5 else a * b
            elif kind == "mul":
                out = a * float(r.choice([0.5, -2.0, 3.0])) - float(r.choice([0.0, 1.0]))
            elif kind == "where":
                out = gc.where(a > 0, a, a * 0.1)
            elif kind == "pad":
                out = gc.pad(a, [(0, 0), (0, 0), (1, 0), (0, 2)])
            elif kind == "transpose":
                perm = tuple(int(i) for i in r.permutation(4))
                if perm[0] == 0:
                    t = gc.transpose(a, perm)
                    self.other.append(t)
                    out = gc.transpose(t, tuple(int(i) for i in np.argsort(perm))) \
                        if r.random() < 0.5 else None
                    if out is None:
                        self.log.append(f"transpose {perm}")
                        return
            elif kind == "reshape":
                f = gc.reshape(a, (-1, c * h * w)) if r.random() < 0.5 else gc.flatten(a)
                self.other.append(f)
                if r.random() < 0.5 and c * h * w % 2 == 0:
                    out = gc.reshape(f, (-1, 2, c * h * w // 2, 1))
            elif kind == "slice":
                ax = int(r.integers(1, 4))
                size = a.shape[ax]
                if size > 1:
                    out = gc.slice(a, ax, int(r.integers(0, size - 1)), size)
            elif kind == "concat":
                same = [b for b in self.pool4 if b.shape[2:] == a.shape[2:]]
                b = same[int(r.integers(len(same)))]
                out = gc.concat([a, b], axis=1)
            elif kind == "reduce":
                axes = (0, 2, 3) if r.random() < 0.3 else tuple(sorted(
                int(i) for i in r.choice(4, int(r.integers(1, 4)), replace=False)))
                op = [gc.sum, gc.mean, gc.max][int(r.integers(3))]
                keep = bool(r.random() < 0.5)
                red = op(a, axis=axes, keepdims=keep)
                if keep and 0 not in axes:
                    out = a - red
                else:
                    self.other.append(red)
            elif kind == "matmul":
                f = gc.flatten(a)
                m = f @ self.var((c * h * w, int(r.integers(1, 5))), 0.2)
                self.other.append(m)
        except GraphcError as e:
            self.log.append(f"{kind}: refused ({str(e).splitlines()[0][:60]})")
            return
        if out is not None:
            self.log.append(f"{kind} -> {out.shape}")
            if out.ndim == 4 and out.shape[0] is None and out.dtype.kind == "f":
                self.pool4.append(out)
            else:
                self.other.append(out)

    def build(self, steps: int):
        for _ in range(steps):
            self.step()
        r = self.rng
        vals = [v for v in self.pool4[1:] + self.other if v.dtype.kind == "f"]
        if not vals:
            return None
        picked = [vals[i] for i in sorted(set(r.integers(len(vals), size=3).tolist()))]
        if self.chain:                       # a CNN's head: only the last value, by a matmul
            last = gc.flatten(self.pool4[-1]) if len(self.pool4) > 1 else vals[-1]
            if last.ndim == 2:
                last = last @ self.var((last.shape[1], 3), 0.2)
            picked = [last]
        loss = sum(gc.sum(gc.square(p)) * float(r.choice([0.01, 0.1])) for p in picked)
        used = [v for v in self.vars if loss_depends(loss, v)]
        wrt = used + ([self.x] if r.random() < 0.5 else [])
        grads = gc.grad(loss, wrt) if wrt else []
        outs = [loss] + [vals[i] for i in set(r.integers(len(vals), size=2).tolist())]
        outs += [g for g in grads if r.random() < 0.5]
        if grads and r.random() < 0.3:       # a gradient of a gradient
            g2 = gc.grad(gc.sum(gc.square(grads[0])), wrt[:1] + ([self.x] if self.x not in
                                                                    wrt[:1] else []))
            outs += g2
        updates = []
        for v, g in zip(wrt, grads):
            if v.op == "variable" and r.random() < 0.7:
                lr = float(r.choice([0.01, 0.001, -0.002]))   # no blow-up
                updates.append((v, v - lr * g))
        for v in self.vars:
            if v not in [u for u, _ in updates] and r.random() < 0.2:
                same = [b for b in vals if b.shape == v.shape]     # a value read as update
                if same:
                    updates.append((v, same[int(r.integers(len(same)))]))
        return outs, updates


class CnnGen(Gen):
    """A CNN (conv, bias, relu, pools) whose buffers go channels-last, and a side reader or
    two of one of its values: the unusual readers (transpose, reshape, slicing, concatenation,
    reductions over odd axes, an output, an update's value, a second pool)."""

    SIDES = ["transpose", "reshape", "slice", "concat", "reduce", "output", "update", "pool",
             "square", "sum023", "maxpool_again", "grad_out"]

    def build(self, steps: int):
        r = self.rng
        h = self.x
        chain = []
        for _ in range(max(1, steps // 3)):
            c = h.shape[1]
            kh, kw = (int(k) for k in r.integers(1, 4, size=2))
            co = int(r.choice([2, 3, 8, 9, 16]))
            # padding below the kernel size: an output of padding alone is the bias
            # everywhere, and a max-pool over such equal values routes its gradient by
            # the rounding of eval's and the compiled convolution (both are right)
            pad = (int(r.integers(0, kh)), int(r.integers(0, kw)))
            pad = pad[0] if r.random() < 0.7 and kh == kw else pad
            stride = int(r.choice([1, 1, 2, 3])) if r.random() < 0.8 else \
                tuple(int(s) for s in r.integers(1, 4, 2))
            try:
                h = gc.conv2d(h, self.var((co, c, kh, kw), (c * kh * kw) ** -0.5),
                              stride=stride, padding=pad)
            except GraphcError:           # a kernel larger than the (padded) image
                break
            chain.append(h)
            if r.random() < 0.7:
                h = h + self.var((1, co, 1, 1), 0.1)
                chain.append(h)
            if r.random() < 0.8:
                h = gc.relu(h)
                chain.append(h)
            if r.random() < 0.7 and min(h.shape[2:]) >= 2:
                size = int(r.integers(1, min(3, min(h.shape[2:])) + 1))
                stride = None if r.random() < 0.6 else int(r.integers(1, 4))
                h = (gc.max_pool2d if r.random() < 0.8 else gc.avg_pool2d)(h, size, stride)
                chain.append(h)
            self.log.append(f"block -> {h.shape}")
        head = gc.flatten(h)
        head = head @ self.var((head.shape[1], 3), head.shape[1] ** -0.5)
        loss = gc.sum(gc.square(head)) * 0.1
        outs, extra_updates = [loss], []
        for _ in range(int(r.integers(1, 3))):
            a = chain[int(r.integers(len(chain)))]
            side = self.SIDES[int(r.integers(len(self.SIDES)))]
            self.log.append(f"side {side} of {a.op} {a.shape}")
            n, c, hh, ww = a.shape
            if side == "transpose":
                outs.append(gc.transpose(a, (0, 2, 3, 1)))
            elif side == "reshape":
                outs.append(gc.reshape(a, (-1, c * hh * ww)) * 2.0)
            elif side == "slice":
                outs.append(gc.slice(a, int(r.integers(1, 4)), 0, 1) + 1.0)
            elif side == "concat":
                outs.append(gc.concat([a, gc.relu(a)], axis=int(r.integers(1, 4))))
            elif side == "reduce":
                axes = [(1,), (2, 3), (1, 3), (0, 1), (0,), (3,)][int(r.integers(6))]
                red = [gc.sum, gc.max, gc.mean][int(r.integers(3))](a, axis=axes)
                loss = loss + gc.sum(gc.square(red)) * 0.01
            elif side == "output":
                outs.append(a)
            elif side == "update":
                v = self.var((2, c, hh, ww), 0.1)
                extra_updates.append((v, v * 0.5 + gc.slice(a, 0, 0, 1)))
            elif side == "pool":
                loss = loss + gc.sum(gc.avg_pool2d(a, 1)) * 0.01
            elif side == "square":
                loss = loss + gc.sum(a * a) * 0.01
            elif side == "sum023":
                outs.append(gc.sum(a, axis=(0, 2, 3), keepdims=bool(r.random() < 0.5)))
            elif side == "maxpool_again" and min(hh, ww) >= 2:
                loss = loss + gc.sum(gc.max_pool2d(a, 2, 1)) * 0.01
            elif side == "grad_out":
                outs.append(gc.grad(loss, [a])[0])
        outs[0] = loss
        wrt = [v for v in self.vars if loss_depends(loss, v)] + \
            ([self.x] if r.random() < 0.5 else [])
        grads = gc.grad(loss, wrt)
        outs += [g for g in grads if r.random() < 0.3]
        if r.random() < 0.2:                 # a gradient of a gradient
            outs += gc.grad(gc.sum(gc.square(grads[0])), [wrt[0]])
        lr = float(r.choice([0.003, 0.0003]))
        updates = [(v, v - lr * g) for v, g in zip(wrt, grads) if v.op == "variable"
                   and r.random() < 0.8 and v not in [u for u, _ in extra_updates]]
        return outs, updates + extra_updates


def loss_depends(loss, v) -> bool:
    from graphc.ir import toposort
    return any(n is v for n in toposort([loss]))


def reference(outs, updates, vars_, x, feeds):
    """Interpreter values of each call: outputs, then every variable after its updates."""
    got = []
    for f in feeds:
        vals = evaluate(list(outs) + [u for _, u in updates], {x: f})
        for (v, _), val in zip(updates, vals[len(outs):]):
            v.value = val
        got.append((vals[:len(outs)], [v.value.copy() for v in vars_]))
    return got


def close(a, b, dtype, what):
    tol = 1e-6 if dtype == "float64" else 2e-3
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (what, a.shape, b.shape, a.dtype, b.dtype)
    scale = 1.0 + (float(np.nanmax(np.abs(b[np.isfinite(b)]), initial=0.0)) if b.size else 0)
    np.testing.assert_allclose(a.astype("float64"), b.astype("float64"), rtol=tol,
                               atol=tol * scale, err_msg=what)     # float32 cancellation


def run_one(seed: int, steps: int = 8, export_dir=None, gen=None, sizes=(2, 2, 3, 2, 1)):
    """Every compiled mode (and the exported module, given a folder) gives the interpreter's
    outputs and variables over five calls at the batch sizes (the fourth's plan is made
    again after the export, the fifth is the export's example)."""
    g = (gen or Gen)(seed)
    built = g.build(steps)
    if built is None:
        return
    outs, updates = built
    init = [v.value.copy() for v in g.vars]
    c, h, w = g.x.shape[1:]
    r = np.random.default_rng(seed + 1)
    feeds = [(r.standard_normal((n, c, h, w))).astype(g.dtype) for n in sizes]
    want = reference(outs, updates, g.vars, g.x, feeds)
    finite = all(np.isfinite(a).all() for wo, wv in want for a in wo + wv)
    if not all(np.all(np.abs(a) < 1e8) for wo, wv in want for a in wo + wv if a.size):
        return                    # a diverging graph: inf against nan, cancellation noise
    for optimize, check in MODES:
        if check and not finite:
            continue
        for v, a in zip(g.vars, init):
            v.value = a
        f = gc.function([g.x], outs, updates=updates, optimize=optimize, check_numerics=check)
        run = f
        for k, (feed, (wo, wv)) in enumerate(zip(feeds, want)):
            if k == 3 and export_dir is not None and optimize and not check:
                run = exported(f, export_dir, seed, feeds[4])   # has run sizes 2 and 3
            got = run(feed)
            what = f"seed {seed} mode {optimize, check} call {k}: " + "; ".join(g.log)
            for i, (a, b) in enumerate(zip(got, wo)):
                close(a, b, g.dtype, f"{what} output {i}")
            state = run.state if run is not f else None
            for v, b in zip(g.vars, wv):
                if state is None or v.name in state:       # the module holds what it reads
                    close(v.value if state is None else state[v.name], b, g.dtype,
                          f"{what} variable {v.name}")


def exported(f, folder, seed, example):
    """f exported to folder/m<seed>.py and imported: its `run`."""
    import importlib.util
    path = f.export(os.path.join(str(folder), f"m{seed}.py"), example)
    spec = importlib.util.spec_from_file_location(f"m{seed}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return Runner(mod)


class Runner:
    def __init__(self, mod):
        self.state = mod.state
        self.mod = mod

    def __call__(self, *args):
        return self.mod.run(*args)


@pytest.mark.parametrize("seed", range(24))
def test_random_conv_graphs_agree_with_the_interpreter(seed, tmp_path):
    run_one(seed, export_dir=tmp_path if seed % 4 == 0 else None)


@pytest.mark.parametrize("seed", range(24))
def test_random_cnns_with_unusual_readers_agree_with_the_interpreter(seed, tmp_path):
    run_one(seed, 9, export_dir=tmp_path if seed % 4 == 1 else None, gen=CnnGen)


@pytest.mark.skipif(not CAMPAIGN, reason="GRAPHC_PROBE19=N runs a campaign")
def test_campaign(tmp_path):
    """N fresh seeds from GRAPHC_PROBE19_BASE (default 1000), both generators, every third
    one through the exported module too."""
    base = int(os.environ.get("GRAPHC_PROBE19_BASE", "1000"))
    for seed in range(base, base + CAMPAIGN):
        run_one(seed, steps=int(np.random.default_rng(seed).integers(3, 16)),
                export_dir=tmp_path if seed % 3 == 0 else None, gen=(Gen, CnnGen)[seed % 2])


# rewrite rules: a constant seen through a cast --------------------------------------------

@pytest.mark.parametrize("xdtype, cdtype", [("float32", "uint8"), ("int16", "uint8"),
                                            ("float64", "bool"), ("int64", "uint16")])
def test_a_product_with_a_cast_minus_one_is_not_a_negation(xdtype, cdtype):
    # is_value looked through the cast as if it kept values: -1 cast to uint8 is 255 (to bool
    # True), so x * cast(-1) is 255 * x (x), but mul_minus_one made it -x
    x = gc.placeholder((40,), xdtype, name="x")
    y = x * gc.cast(gc.broadcast_to(gc.constant(np.array(-1)), (40,)), cdtype)  # not folded
    xv = np.arange(40).astype(xdtype)
    np.testing.assert_array_equal(gc.function([x], y)(xv), y.eval({x: xv}))


def test_a_condition_made_false_by_a_cast_selects_the_second_branch():
    # where_constant read 0.4 through cast(cast(0.4, int64), bool): all "true", but the
    # condition is 0 -> False everywhere
    x = gc.placeholder((40,), "float64", name="x")
    c = gc.cast(gc.cast(gc.broadcast_to(gc.constant(np.array(0.4)), (40,)), "int64"), "bool")
    y = gc.where(c, x, -x)
    xv = np.arange(40.0) + 1
    np.testing.assert_array_equal(gc.function([x], y)(xv), -xv)


# errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, build", [("uint8", lambda z: z * -1), ("int8", lambda z: z + 300),
                                          ("uint16", lambda z: gc.maximum(z, -5)),
                                          ("float16", lambda z: z * 1e5)])
def test_a_python_scalar_that_does_not_fit_beside_a_node_is_a_graphc_error(dtype, build):
    # NumPy's weak scalars take the node's dtype: np.asarray(-1, uint8) raised a bare
    # OverflowError from inside graphc.ir, naming neither the op nor the user's line (and
    # 1e5 became an inf constant in float16, with a RuntimeWarning)
    z = gc.placeholder((3,), dtype, name="z")
    with pytest.raises(GraphcError, match=f"does not fit {dtype}.*\n.*test_probe19.py"):
        build(z)


@pytest.mark.parametrize("build", [lambda: gc.relu(1e300), lambda: gc.exp(1e300),
                                   lambda: gc.expand_dims(1e300, 0)])
def test_a_python_scalar_that_does_not_fit_float32_alone_is_a_graphc_error(build):
    # with no node beside it a float is float32: relu(1e300) raised AttributeError from the
    # error message itself, expand_dims(1e300, 0) a bare OverflowError
    with pytest.raises(GraphcError, match=r"scalar 1e\+300 does not fit float32\n.*test_probe19"):
        build()


@pytest.mark.parametrize("build, match", [
    (lambda: gc.constant(300, dtype="int8"), "constant: 300 does not fit int8"),
    (lambda: gc.constant(1, dtype="foo"), "constant: unknown dtype 'foo'"),
    (lambda: gc.cast(gc.placeholder((2,), "float32"), "foo"), r"cast\(.*unknown dtype foo"),
    (lambda: gc.cast(gc.placeholder((2,), "float32"), "complex64"),
     r"cast\(.*bool, integer or float type, got complex64")])
def test_bad_dtypes_and_values_of_constants_and_casts_are_graphc_errors(build, match):
    # were a bare OverflowError / TypeError; a cast to complex64 built a node no other op or
    # placeholder accepts
    with pytest.raises(GraphcError, match=match + r"(.|\n)*test_probe19.py"):
        build()


@pytest.mark.parametrize("build", [
    lambda: gc.placeholder((None, -1), name="p"), lambda: gc.placeholder((2,), "foo"),
    lambda: gc.variable(np.array(["a"])), lambda: gc.concat([]),
    lambda: gc.grad(gc.sum(gc.placeholder((2,), "int8")), []),
    lambda: gc.function([gc.placeholder((2,), name="x")] * 2, gc.constant(1.0))])
def test_errors_of_leaves_and_lists_name_the_users_line(build):
    # these named no file:line at all
    with pytest.raises(GraphcError, match=r"test_probe19.py:\d+"):
        build()


# float16 reductions ------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [70000, None])
@pytest.mark.parametrize("stat", ["mean", "var", "var1", "std"])
def test_float16_mean_and_variance_of_more_than_65504_elements(batch, stat):
    # the count 70000 is inf in float16: gc.mean of 70000 values was 0 (NumPy's mean: right,
    # through float32 intermediates), and so were var/std; the mean's gradient was 0 as well
    x = gc.placeholder((batch,), "float16", name="x")
    fn = {"mean": gc.mean, "var": gc.var, "std": gc.std,
          "var1": lambda v: gc.var(v, ddof=1)}[stat]
    y = fn(x)
    xv = (np.arange(70000) % 4).astype("float16")
    exact = xv.astype("float64")          # NumPy's own float16 var is inf here
    want = {"mean": exact.mean(), "var": exact.var(), "std": exact.std(),
            "var1": exact.var(ddof=1)}[stat]
    assert y.dtype == np.float16
    for got in (y.eval({x: xv}), gc.function([x], y)(xv)):
        np.testing.assert_allclose(float(got), float(want), rtol=2e-3)
    if stat == "mean":
        g = gc.function([x], gc.grad(y, [x])[0])(xv)
        np.testing.assert_allclose(g.astype("float64"), 1 / 70000, rtol=2e-2)


def test_a_float16_sum_of_a_broadcast_scalar_over_more_than_65504_elements():
    # sum_broadcast made sum(broadcast_to(s, (70000,))) s * 70000 with the count in float16,
    # inf: the compiled sum of 70000 copies of 0.001 was inf where eval gives 70
    s = gc.placeholder((), "float16", name="s")
    y = gc.sum(gc.broadcast_to(s, (70000,)))
    sv = np.float16(0.001)
    np.testing.assert_allclose(gc.function([s], y)(sv).astype("float64"),
                               y.eval({s: sv}).astype("float64"), rtol=1e-2)


@pytest.mark.parametrize("shape, axis", [((5000, 3), 0), ((3, 5000, 2), 1), ((50, 100, 3), (0, 1)),
                                         ((3, 5000), 1)])
def test_float16_sums_accumulate_in_float32_in_eval_and_compiled(shape, axis):
    # eval's np.sum of float16 over a non-contiguous axis added in float16 and stalled at 256
    # for 5000 x 0.1, where the compiled sum (a product with a ones row) gave 500
    x = gc.placeholder(shape, "float16", name="x")
    y = gc.sum(x, axis=axis)
    xv = np.full(shape, 0.1, "float16")
    want = xv.astype("float64").sum(axis=axis)
    for got in (y.eval({x: xv}), gc.function([x], y)(xv), gc.function([x], y * 1)(xv)):
        assert got.dtype == np.float16
        np.testing.assert_allclose(got.astype("float64"), want, rtol=2e-3)
