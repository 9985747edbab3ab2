"""Op table rows for the nn family (softmax, losses, conv, pooling, dropout) and their
gradient ops: kernels vs naive NumPy loops, shape rules, first and second order gradients."""
import inspect

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import scipy.special
import sympy as sp

import graphc as gc
from graphc.ir import OPS, apply, evaluate
from tests.helpers import Row, ops_in, verify_grad

rng = np.random.default_rng(1)


def f64(*shape, lo=-2.0, hi=2.0):
    return rng.uniform(lo, hi, size=shape)


def distinct(*shape):
    """Values far apart (no ties within any window, none straddled by finite differences)."""
    v = rng.permutation(np.arange(int(np.prod(shape)))) * 0.1 - 1.0
    return v.reshape(shape)


def probs(*shape):
    p = rng.uniform(0.1, 1.0, size=shape)
    return p / p.sum(axis=-1, keepdims=True)


# naive references: loops over output positions, written independently of the kernels ----

def pairs(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def padded(x, p):
    ph, pw = pairs(p)
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def out_positions(h, w, kh, kw, s):
    sh, sw = pairs(s)
    for i in range((h - kh) // sh + 1):
        for j in range((w - kw) // sw + 1):
            yield i, j, np.s_[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]


def conv_ref(x, w, stride=1, padding=0):
    xp = padded(x, padding)
    pos = list(out_positions(*xp.shape[2:], *w.shape[2:], stride))
    out = np.zeros((x.shape[0], w.shape[0], pos[-1][0] + 1, pos[-1][1] + 1))
    for i, j, win in pos:
        out[:, :, i, j] = np.einsum("ncij,ocij->no", xp[win], w)
    return out


def conv_grad_input_ref(g, w, x, stride=1, padding=0):
    dxp = np.zeros(padded(x, padding).shape)
    for i, j, win in out_positions(*dxp.shape[2:], *w.shape[2:], stride):
        dxp[win] += np.einsum("no,ocij->ncij", g[:, :, i, j], w)
    ph, pw = pairs(padding)
    return dxp[:, :, ph:dxp.shape[2] - ph, pw:dxp.shape[3] - pw]


def conv_grad_weight_ref(x, g, w, stride=1, padding=0):
    xp, dw = padded(x, padding), np.zeros(w.shape)
    for i, j, win in out_positions(*xp.shape[2:], *w.shape[2:], stride):
        dw += np.einsum("no,ncij->ocij", g[:, :, i, j], xp[win])
    return dw


def pool_ref(x, size, stride=None, reduce=np.max):
    kh, kw = pairs(size)
    pos = list(out_positions(*x.shape[2:], kh, kw, stride or size))
    out = np.zeros(x.shape[:2] + (pos[-1][0] + 1, pos[-1][1] + 1))
    for i, j, win in pos:
        out[:, :, i, j] = reduce(x[win], axis=(2, 3))
    return out


def winners(x, size, stride):
    """(i, j, n, c, row, col) of the first maximum of every window."""
    kh, kw = pairs(size)
    for i, j, win in out_positions(*x.shape[2:], kh, kw, stride or size):
        for n in range(x.shape[0]):
            for c in range(x.shape[1]):
                k = int(np.argmax(x[win][n, c]))   # first maximum in row-major order
                yield i, j, n, c, win[2].start + k // kw, win[3].start + k % kw


def max_grad_ref(g, x, size, stride=None):
    dx = np.zeros(x.shape)
    for i, j, n, c, r, q in winners(x, size, stride):
        dx[n, c, r, q] += g[n, c, i, j]
    return dx


def max_gather_ref(y, x, size, stride=None):
    out = pool_ref(x, size, stride)
    for i, j, n, c, r, q in winners(x, size, stride):
        out[n, c, i, j] = y[n, c, r, q]
    return out


def avg_grad_ref(g, x, size, stride=None):
    kh, kw = pairs(size)
    dx = np.zeros(x.shape)
    for i, j, win in out_positions(*x.shape[2:], kh, kw, stride or size):
        dx[win] += g[:, :, i, j][:, :, None, None] / (kh * kw)
    return dx


def sce_ref(z, y):
    logp = scipy.special.log_softmax(z, axis=-1)
    if y.dtype.kind == "f":
        return -(y * logp).sum(axis=-1)
    return -np.take_along_axis(logp, y[..., None], axis=-1)[..., 0]


def sce_grad_ref(z, y, g):
    s = scipy.special.softmax(z, axis=-1)
    if y.dtype.kind == "f":
        return (s * y.sum(axis=-1, keepdims=True) - y) * g[..., None]
    onehot = np.eye(z.shape[-1])[y]
    return (s - onehot) * g[..., None]


def dropout_ref(x, rate, seed):
    keep = 1 - rate
    return x * (np.random.default_rng(seed).random(x.shape) < keep) / keep


def op(name, **attrs):
    return lambda *xs: apply(name, *xs, **attrs)


SCE = ("softmax_cross_entropy", "softmax_cross_entropy_grad")
X_CONV, W_CONV = f64(2, 3, 7, 6), f64(4, 3, 3, 2)      # non-square kernel
G_CONV = f64(2, 4, 4, 4)                               # conv(X, W, stride 2, padding 1)
X_POOL = distinct(2, 2, 7, 5)

ROWS = [
    Row("softmax", gc.softmax, [f64(3, 5)], lambda x: scipy.special.softmax(x, axis=-1)),
    Row("softmax", lambda x: gc.softmax(x, axis=0), [f64(4, 2, 3)],
        lambda x: scipy.special.softmax(x, axis=0)),
    Row("log_softmax", gc.log_softmax, [f64(3, 5)],
        lambda x: scipy.special.log_softmax(x, axis=-1)),
    Row("log_softmax", lambda x: gc.log_softmax(x, axis=1), [f64(2, 4, 3) * 30],
        lambda x: scipy.special.log_softmax(x, axis=1)),     # large logits: stable kernel
    Row("softmax_cross_entropy", gc.softmax_cross_entropy,
        [f64(5, 4), np.array([0, 3, 1, 3, 2])], sce_ref, ops=SCE),
    Row("softmax_cross_entropy", gc.softmax_cross_entropy,
        [f64(2, 3, 4), rng.integers(0, 4, size=(2, 3))], sce_ref, ops=SCE),
    Row("softmax_cross_entropy", gc.softmax_cross_entropy, [f64(3, 4), probs(3, 4)],
        sce_ref, ops=SCE + ("log_softmax",)),
    Row("softmax_cross_entropy_grad", op("softmax_cross_entropy_grad"),
        [f64(4, 3), np.array([2, 0, 1, 2]), f64(4)], sce_grad_ref, ops=SCE),
    Row("softmax_cross_entropy_grad", op("softmax_cross_entropy_grad"),
        [f64(2, 2, 3), f64(2, 2, 3, lo=0, hi=1), f64(2, 2)], sce_grad_ref, ops=SCE),
    Row("binary_cross_entropy", gc.binary_cross_entropy,
        [f64(3, 4, lo=0.05, hi=0.95), f64(3, 4, lo=0, hi=1)],
        lambda p, y: -(y * np.log(p) + (1 - y) * np.log(1 - p)),
        ops=("log", "mul", "sub", "add", "neg")),
    Row("binary_cross_entropy", lambda z, y: gc.binary_cross_entropy(z, y, from_logits=True),
        [f64(3, 4) * 20, f64(3, 4, lo=0, hi=1)],
        lambda z, y: -(y * scipy.special.log_expit(z) + (1 - y) * scipy.special.log_expit(-z)),
        ops=("softplus", "mul", "sub")),
    Row("conv2d", lambda x, w: gc.conv2d(x, w, stride=2, padding=1), [X_CONV, W_CONV],
        lambda x, w: conv_ref(x, w, 2, 1), ops=("conv2d", "conv2d_grad_input",
                                                "conv2d_grad_weight")),
    Row("conv2d", gc.conv2d, [f64(1, 2, 5, 5), f64(3, 2, 3, 3)], conv_ref,
        ops=("conv2d", "conv2d_grad_input", "conv2d_grad_weight")),
    Row("conv2d", lambda x, w: gc.conv2d(x, w, stride=(1, 2), padding=(2, 0)),
        [f64(2, 2, 4, 7), f64(2, 2, 2, 3)], lambda x, w: conv_ref(x, w, (1, 2), (2, 0)),
        ops=("conv2d", "conv2d_grad_input", "conv2d_grad_weight")),
    Row("conv2d_grad_input", op("conv2d_grad_input", stride=2, padding=1),
        [G_CONV, W_CONV, X_CONV], lambda g, w, x: conv_grad_input_ref(g, w, x, 2, 1),
        ops=("conv2d_grad_input", "conv2d", "conv2d_grad_weight")),
    Row("conv2d_grad_weight", op("conv2d_grad_weight", stride=2, padding=1),
        [X_CONV, G_CONV, W_CONV], lambda x, g, w: conv_grad_weight_ref(x, g, w, 2, 1),
        ops=("conv2d_grad_weight", "conv2d", "conv2d_grad_input")),
    Row("max_pool2d", lambda x: gc.max_pool2d(x, 2), [X_POOL], lambda x: pool_ref(x, 2),
        ops=("max_pool2d", "max_pool2d_grad")),
    Row("max_pool2d", lambda x: gc.max_pool2d(x, (3, 2), stride=(2, 1)), [X_POOL],
        lambda x: pool_ref(x, (3, 2), (2, 1)), ops=("max_pool2d", "max_pool2d_grad")),
    Row("max_pool2d", lambda x: gc.max_pool2d(x, 2), [distinct(1, 3, 4, 6)],
        lambda x: pool_ref(x, 2), ops=("max_pool2d", "max_pool2d_grad")),
    Row("max_pool2d_grad", op("max_pool2d_grad", size=(3, 2), stride=(2, 1)),
        [f64(2, 2, 3, 4), X_POOL], lambda g, x: max_grad_ref(g, x, (3, 2), (2, 1)),
        ops=("max_pool2d_grad", "max_pool2d_gather")),
    Row("max_pool2d_gather", op("max_pool2d_gather", size=(3, 2), stride=(2, 1)),
        [f64(2, 2, 7, 5), X_POOL], lambda y, x: max_gather_ref(y, x, (3, 2), (2, 1)),
        ops=("max_pool2d_gather", "max_pool2d_grad")),
    Row("avg_pool2d", lambda x: gc.avg_pool2d(x, 2), [f64(2, 2, 7, 5)],
        lambda x: pool_ref(x, 2, reduce=np.mean), ops=("avg_pool2d", "avg_pool2d_grad")),
    Row("avg_pool2d", lambda x: gc.avg_pool2d(x, (2, 3), stride=1), [f64(1, 2, 4, 5)],
        lambda x: pool_ref(x, (2, 3), 1, reduce=np.mean), ops=("avg_pool2d", "avg_pool2d_grad")),
    Row("avg_pool2d_grad", op("avg_pool2d_grad", size=(2, 3), stride=(1, 2)),
        [f64(1, 2, 3, 2), f64(1, 2, 4, 5)], lambda g, x: avg_grad_ref(g, x, (2, 3), (1, 2)),
        ops=("avg_pool2d_grad", "avg_pool2d")),
    Row("dropout", lambda x: gc.dropout(x, 0.25, seed=3), [f64(4, 5)],
        lambda x: dropout_ref(x, 0.25, 3), ops=("dropout_mask", "mul")),
]


def test_rows_name_registered_ops():
    for row in ROWS:
        missing = [o for o in row.ops if o not in OPS]
        assert not missing, (row.name, missing)


def test_float32_stays_float32():
    x32, w32 = X_CONV.astype(np.float32), W_CONV.astype(np.float32)
    x, w = gc.placeholder(x32.shape), gc.placeholder(w32.shape)
    out = gc.conv2d(x, w, stride=2, padding=1)
    val = out.eval({x: x32, w: w32})
    assert out.dtype == val.dtype == np.float32
    np.testing.assert_allclose(val, conv_ref(X_CONV, W_CONV, 2, 1), rtol=1e-4, atol=1e-5)
    for node in gc.grad(gc.sum(gc.max_pool2d(out, 2)), [x, w]):
        assert node.eval({x: x32, w: w32}).dtype == np.float32


@pytest.mark.parametrize("labels", [np.array([0, 2, 1]), probs(3, 4).astype(np.float32)])
def test_float32_losses_and_softmax(labels):
    z, y = gc.placeholder((3, 4)), gc.placeholder(labels.shape, labels.dtype)
    zv = f64(3, 4).astype(np.float32)
    nodes = [gc.softmax(z), gc.log_softmax(z), gc.softmax_cross_entropy(z, y),
             gc.dropout(z, 0.5, seed=0)]
    nodes.append(gc.grad(gc.sum(nodes[2]), z))
    for node in nodes:
        assert node.dtype == node.eval({z: zv, y: labels}).dtype == np.float32
    want = sce_ref(zv.astype(np.float64), labels)
    np.testing.assert_allclose(nodes[2].eval({z: zv, y: labels}), want, rtol=1e-5)


small, pads = st.integers(1, 3), st.integers(0, 2)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(n=small, c=small, co=small, h=st.integers(1, 7), w=st.integers(1, 7), kh=small,
       kw=small, stride=st.tuples(small, small), padding=st.tuples(pads, pads),
       seed=st.integers(0, 2**16))
def test_conv_and_pools_match_naive_loops_on_random_configs(n, c, co, h, w, kh, kw, stride,
                                                            padding, seed):
    """Shape rule, kernels and gradient kernels against the naive loops, any geometry."""
    r = np.random.default_rng(seed)
    xv, wv = r.standard_normal((n, c, h, w)), r.standard_normal((co, c, kh, kw))
    x, wt = gc.placeholder(xv.shape, "float64"), gc.placeholder(wv.shape, "float64")
    feeds = {x: xv, wt: wv}
    if h + 2 * padding[0] >= kh and w + 2 * padding[1] >= kw:
        y = gc.conv2d(x, wt, stride, padding)
        gv = r.standard_normal(y.shape)
        gx, gw = gc.vjp(y, [x, wt], gc.constant(gv))
        got = evaluate([y, gx, gw], feeds)
        np.testing.assert_allclose(got[0], conv_ref(xv, wv, stride, padding), atol=1e-12)
        np.testing.assert_allclose(got[1], conv_grad_input_ref(gv, wv, xv, stride, padding),
                                   atol=1e-12)
        np.testing.assert_allclose(got[2], conv_grad_weight_ref(xv, gv, wv, stride, padding),
                                   atol=1e-12)
    if h >= kh and w >= kw:
        for pool, reduce in ((gc.max_pool2d, np.max), (gc.avg_pool2d, np.mean)):
            y = pool(x, (kh, kw), stride)
            gv = r.standard_normal(y.shape)
            got_y, got_g = evaluate([y, gc.vjp(y, x, gc.constant(gv))], feeds)
            np.testing.assert_allclose(got_y, pool_ref(xv, (kh, kw), stride, reduce))
            ref = max_grad_ref if reduce is np.max else avg_grad_ref
            np.testing.assert_allclose(got_g, ref(gv, xv, (kh, kw), stride), atol=1e-12)


# second order: gradients of gradients --------------------------------------------------

def grad_of(cost_fn, wrt=0):
    """build(*leaves) -> d cost_fn(*leaves) / d leaves[wrt] (a node to differentiate again)."""
    return lambda *xs: gc.grad(cost_fn(*xs), xs[wrt])


R_SM = f64(3, 4)


@pytest.mark.parametrize("fn", [gc.softmax, gc.log_softmax, lambda x: gc.softmax(x, axis=0)])
def test_second_order_softmax_family(fn):
    verify_grad(grad_of(lambda x: gc.sum(fn(x) * fn(x) * R_SM)), [f64(3, 4)])


def test_second_order_cross_entropy_integer_labels():
    cost = lambda z, y: gc.sum(gc.softmax_cross_entropy(z, y) * np.arange(1.0, 5.0))  # noqa
    verify_grad(grad_of(cost), [f64(4, 3), np.array([2, 0, 1, 1])])


def test_second_order_cross_entropy_float_labels():
    cost = lambda z, y: gc.sum(gc.softmax_cross_entropy(z, y) ** 2)  # noqa: E731
    inputs = [f64(3, 4), f64(3, 4, lo=0, hi=1)]
    verify_grad(grad_of(cost, 0), inputs)
    verify_grad(grad_of(cost, 1), inputs)


def test_second_order_conv2d():
    r = f64(2, 4, 4, 4)
    cost = lambda x, w: gc.sum(gc.conv2d(x, w, 2, 1) * gc.conv2d(x, w, 2, 1) * r)  # noqa
    inputs = [f64(2, 3, 7, 6), f64(4, 3, 3, 2)]
    verify_grad(grad_of(cost, 0), inputs)
    verify_grad(grad_of(cost, 1), inputs)


@pytest.mark.parametrize("pool", [lambda x: gc.max_pool2d(x, 2),
                                  lambda x: gc.max_pool2d(x, (3, 2), stride=(2, 1)),
                                  lambda x: gc.avg_pool2d(x, 3, stride=2)])
def test_second_order_pools(pool):
    r = f64(*pool(gc.placeholder(X_POOL.shape, "float64")).shape)
    verify_grad(grad_of(lambda x: gc.sum(pool(x) * pool(x) * r)), [X_POOL])


def test_third_order_max_pool_uses_gather_and_scatter():
    x = gc.placeholder(X_POOL.shape, "float64")
    g1 = gc.grad(gc.sum(gc.max_pool2d(x, 2) ** 3), x)
    g2 = gc.grad(gc.sum(g1 * g1), x)
    assert {"max_pool2d_grad", "max_pool2d_gather"} <= ops_in(g2)
    verify_grad(lambda x: gc.grad(gc.sum(gc.grad(gc.sum(gc.max_pool2d(x, 2) ** 3), x) ** 2), x),
                [X_POOL])


def test_small_cnn_gradient():
    """conv -> relu -> max pool -> dense -> softmax cross-entropy, against finite differences."""
    labels = np.array([1, 0, 2])

    def model(x, w, v):
        h = gc.max_pool2d(gc.relu(gc.conv2d(x, w, padding=1)), 2)      # (3, 2, 2, 2)
        return gc.mean(gc.softmax_cross_entropy(gc.reshape(h, (3, 8)) @ v, labels))
    verify_grad(model, [f64(3, 1, 4, 5), f64(2, 1, 3, 3), f64(8, 3)])


# semantics -----------------------------------------------------------------------------

def test_max_pool_routes_ties_to_the_first_maximum():
    x = gc.placeholder((1, 1, 2, 4), "float64")
    value = np.array([[[[1.0, 1.0, 0.0, 2.0], [1.0, 0.0, 2.0, 2.0]]]])
    got = gc.grad(gc.sum(gc.max_pool2d(x, 2)), x).eval({x: value})
    np.testing.assert_array_equal(got, [[[[1, 0, 0, 1], [0, 0, 0, 0]]]])


def test_pool_floor_mode_and_default_stride():
    x = gc.placeholder((2, 3, 7, 5), "float64")
    assert gc.max_pool2d(x, 2).shape == (2, 3, 3, 2)
    assert gc.avg_pool2d(x, (3, 2), stride=(2, 1)).shape == (2, 3, 3, 4)
    assert gc.max_pool2d(x, 2).attrs == {"size": (2, 2), "stride": (2, 2)}


def test_batch_dim_unknown_until_run_time():
    x = gc.placeholder((None, 3, 7, 6), "float64")
    w = gc.variable(W_CONV)
    h = gc.max_pool2d(gc.conv2d(x, w, stride=2, padding=1), 2, stride=1)
    assert h.shape == (None, 4, 3, 3)
    gx, gw = gc.grad(gc.sum(h), [x, w])
    assert gx.shape == (None, 3, 7, 6) and gw.shape == W_CONV.shape
    assert gx.eval({x: X_CONV}).shape == X_CONV.shape
    z, y = gc.placeholder((None, 4), "float64"), gc.placeholder((None,), "int64")
    assert gc.softmax_cross_entropy(z, y).shape == (None,)
    gz = gc.grad(gc.mean(gc.softmax_cross_entropy(z, y)), z)
    assert gz.eval({z: f64(3, 4), y: np.array([0, 1, 3])}).shape == (3, 4)


def test_cross_entropy_gradient_is_one_fused_op():
    z, y = gc.placeholder((5, 4), "float64"), gc.placeholder((5,), "int64")
    gz = gc.grad(gc.sum(gc.softmax_cross_entropy(z, y)), z)
    assert gz.op == "softmax_cross_entropy_grad"
    zv, yv = f64(5, 4), np.array([0, 1, 2, 3, 0])
    np.testing.assert_allclose(gz.eval({z: zv, y: yv}), sce_grad_ref(zv, yv, np.ones(5)))


def test_cross_entropy_is_stable_for_huge_logits():
    z, y = gc.placeholder((2, 3), "float64"), gc.placeholder((2,), "int64")
    zv = np.array([[1000.0, 0.0, -1000.0], [-800.0, 800.0, 0.0]])
    loss = gc.softmax_cross_entropy(z, y).eval({z: zv, y: np.array([0, 0])})
    np.testing.assert_allclose(loss, [0.0, 1600.0])
    p = gc.softmax(z).eval({z: zv})
    np.testing.assert_allclose(p, [[1, 0, 0], [0, 1, 0]], atol=1e-300)


def test_softmax_sympy_form_matches_kernel():
    x = f64(2, 3)
    for axis in (0, 1):
        for name, ref in (("softmax", scipy.special.softmax),
                          ("log_softmax", scipy.special.log_softmax)):
            form = OPS[name].sym(sp.Matrix(x), axis=axis)
            np.testing.assert_allclose(np.array(form.evalf(), float), ref(x, axis=axis))
    a, b = sp.symbols("a b")
    assert sp.simplify(OPS["softmax"].sym(sp.Matrix([[a, b]]), axis=1)[0]
                       - 1 / (1 + sp.exp(b - a))) == 0
    z, y = f64(2, 3), np.array([2, 0])
    form = OPS["softmax_cross_entropy"].sym(sp.Matrix(z), sp.Matrix(y.tolist()))
    np.testing.assert_allclose(np.array(form.evalf(), float)[:, 0], sce_ref(z, y))


# dropout --------------------------------------------------------------------------------

def test_dropout_same_seed_same_mask_and_mean_keep_rate():
    x = gc.placeholder((200, 100), "float64")
    ones = np.ones((200, 100))
    a = gc.dropout(x, 0.3, seed=7).eval({x: ones})
    b = gc.dropout(x, 0.3, seed=7).eval({x: ones})
    c = gc.dropout(x, 0.3, seed=8).eval({x: ones})
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert set(np.unique(a)) == {0.0, 1 / 0.7}
    mask = apply("dropout_mask", x, keep=0.7, seed=7).eval({x: ones})
    assert abs(mask.mean() - 0.7) < 0.02
    np.testing.assert_allclose(a, mask / 0.7)


def test_dropout_off_is_identity():
    x = gc.placeholder((3, 4), "float64")
    assert gc.dropout(x, 0.5, training=False) is x
    assert gc.dropout(x, 0.0) is x


def test_dropout_gradient_reuses_the_forward_mask():
    x = gc.placeholder((30, 20), "float64")
    out = gc.dropout(x, 0.5)                        # no seed: a fresh mask per evaluation
    gx = gc.grad(gc.sum(out * 3.0), x)
    masks = [n for n in gc.Graph([out, gx]).nodes if n.op == "dropout_mask"]
    assert len(masks) == 1
    xv = f64(30, 20)
    fwd_val, back = evaluate([out, gx], {x: xv})    # one run: one mask for both
    np.testing.assert_allclose(back, np.where(fwd_val != 0, 3.0 / 0.5, 0.0))
    assert 0 < np.count_nonzero(fwd_val) < xv.size


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, "0.5", None])
def test_dropout_rejects_bad_rates(rate):
    x = gc.placeholder((3, 4))
    with pytest.raises(gc.GraphcError, match=r"dropout: rate must be .*\[0, 1\)") as e:
        line = inspect.currentframe().f_lineno + 1
        gc.dropout(x, rate)
    assert f"test_ops_nn.py:{line}" in str(e.value)


# errors ---------------------------------------------------------------------------------

def test_conv_channel_mismatch_names_op_shapes_and_line():
    x = gc.placeholder((2, 3, 8, 8), name="img")
    w = gc.variable(np.zeros((4, 5, 3, 3), np.float32))
    with pytest.raises(gc.GraphcError) as e:
        line = inspect.currentframe().f_lineno + 1
        gc.conv2d(x, w, padding=1)
    msg = str(e.value)
    assert "conv2d" in msg and "channel" in msg
    assert "(2, 3, 8, 8)" in msg and "(4, 5, 3, 3)" in msg
    assert f"test_ops_nn.py:{line}" in msg


@pytest.mark.parametrize("build, words", [
    (lambda x: gc.conv2d(x, gc.placeholder((4, 3, 9, 3))), ["conv2d", "kernel height 9"]),
    (lambda x: gc.conv2d(x, gc.placeholder((4, 3, 3, 3)), stride=0), ["stride", "got 0"]),
    (lambda x: gc.conv2d(x, gc.placeholder((3, 3))), ["conv2d", "rank-4", "(3, 3)"]),
    (lambda x: gc.max_pool2d(x, 9), ["max_pool2d", "window height 9", "(2, 3, 8, 8)"]),
    (lambda x: gc.avg_pool2d(x, (2, 2, 2)), ["avg_pool2d", "size"]),
    (lambda x: gc.softmax(x, axis=4), ["softmax", "axis"]),
    (lambda x: gc.softmax_cross_entropy(gc.reshape(x, (16, 24)), gc.placeholder((24,), "int64")),
     ["softmax_cross_entropy", "(24,)", "(16,)"]),
    (lambda x: gc.softmax_cross_entropy(gc.reshape(x, (16, 24)), gc.placeholder((16, 2))),
     ["softmax_cross_entropy", "(16, 2)", "(16, 24)"]),
])
def test_build_errors_name_the_problem(build, words):
    x = gc.placeholder((2, 3, 8, 8))
    with pytest.raises(gc.GraphcError) as e:
        build(x)
    for word in words + ["test_ops_nn.py:"]:
        assert word in str(e.value)


def test_out_of_range_label_is_a_run_time_error_naming_the_op():
    z, y = gc.placeholder((3, 4), "float64"), gc.placeholder((3,), "int64")
    line = inspect.currentframe().f_lineno + 1
    loss = gc.softmax_cross_entropy(z, y)
    for node in (loss, gc.grad(gc.sum(loss), z)):
        with pytest.raises(gc.GraphcError) as e:
            node.eval({z: f64(3, 4), y: np.array([0, 4, 1])})
        msg = str(e.value)
        assert "softmax_cross_entropy" in msg and "label 4 is out of range for 4 classes" in msg
        assert "test_ops_nn.py:" in msg
    assert f"test_ops_nn.py:{line}" in msg
    z2, g = gc.placeholder((3, 2), "float64"), gc.placeholder((3,), "float64")
    with pytest.raises(gc.GraphcError, match="label 3 is out of range for 2 classes"):
        apply("softmax_cross_entropy_grad", z2, y, g).eval(
            {z2: f64(3, 2), y: np.array([0, 3, 1]), g: np.ones(3)})
    with pytest.raises(gc.GraphcError, match="label -1"):
        loss.eval({z: f64(3, 4), y: np.array([0, -1, 1])})


def test_binary_cross_entropy_of_saturated_probabilities_clamps_the_logs():
    p, y = gc.placeholder((4,), "float64"), gc.placeholder((4,), "float64")
    loss = gc.binary_cross_entropy(p, y)
    (gp,) = gc.grad(gc.sum(loss), [p])
    feeds = {p: np.array([0.0, 1.0, 0.0, 1.0]), y: np.array([0.0, 1.0, 1.0, 0.0])}
    f = gc.function([p, y], [loss, gp])
    for value, grad in (f(*feeds.values()), (loss.eval(feeds), gp.eval(feeds))):
        np.testing.assert_allclose(value, [0.0, 0.0, 100.0, 100.0])   # 0 log 0 = 0, as PyTorch
        np.testing.assert_allclose(grad, [1.0, -1.0, 0.0, 0.0])       # exact, or flat if clamped


@pytest.mark.parametrize("labels", ["int", "float"])
def test_cross_entropy_labels_of_another_batch_are_refused_not_broadcast(labels):
    z = gc.placeholder((None, 4), "float64", name="z")
    y = gc.placeholder((None,) if labels == "int" else (None, 4),
                       "int64" if labels == "int" else "float64", name="y")
    loss = gc.softmax_cross_entropy(z, y)
    (gz,) = gc.grad(gc.sum(loss), [z])
    yv = np.array([2]) if labels == "int" else np.eye(4)[[2]]
    zv = f64(8, 4)
    for check in (False, True):
        f = gc.function([z, y], [loss, gz], check_numerics=check)
        with pytest.raises(gc.GraphcError) as e:      # the plan's shape rule or the kernel
            f(zv, yv)
        assert "softmax_cross_entropy" in str(e.value) and "(1," in str(e.value) \
            and "(8," in str(e.value) and "test_ops_nn.py" in str(e.value)
        np.testing.assert_allclose(f(zv[:1], yv)[0], loss.eval({z: zv[:1], y: yv}))
    with pytest.raises(gc.GraphcError, match="do not match logits"):
        loss.eval({z: zv, y: yv})
