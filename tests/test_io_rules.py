"""Every attribute and shape is checked when a node is built, so also when a file is loaded:
gradient ops check stride, padding and size like their forward ops, and sizes are exact."""
from __future__ import annotations

import json

import numpy as np
import pytest

import graphc as gc
from graphc.ir import apply
from tests.test_io import write_signed

x = gc.placeholder((2, 3, 8, 8), name="x")
w = gc.variable(np.ones((4, 3, 3, 3), "float32"), name="w")


def refused(match, op, *inputs, **attrs):
    with pytest.raises(gc.GraphcError, match=match) as info:
        apply(op, *inputs, **attrs)
    assert op in str(info.value) and "test_io_rules.py" in str(info.value)


def test_pool_gradients_check_size_and_stride_like_the_forward_op():
    g = gc.placeholder((2, 3, 4, 4), name="g")
    for op in ("max_pool2d_grad", "avg_pool2d_grad"):
        refused("window height 9223372036854775808|size must be an int in", op, g, x,
                size=2**63)
        refused("window height 9 is larger than the input size 8", op, g, x, size=9)
        refused(r"g \(2, 3, 4, 4\) must have the shape \(2, 3, 2, 2\)", op, g, x, size=4)
        refused("stride must be an int in", op, g, x, size=2, stride=0)
        refused("size must be an int in", op, g, x, size=True)
        assert apply(op, g, x, size=2).shape == x.shape
    refused(r"y \(2, 3, 4, 4\) must have the shape \(2, 3, 8, 8\)", "max_pool2d_gather",
            g, x, size=2)


def test_conv_gradients_check_stride_padding_and_kernel_like_conv2d():
    g = gc.placeholder((2, 4, 6, 6), name="g")
    assert apply("conv2d_grad_input", g, w, x).shape == x.shape
    assert apply("conv2d_grad_weight", x, g, w).shape == w.shape
    refused(r"g \(2, 4, 6, 6\) must have the shape \(2, 4, 3, 3\)", "conv2d_grad_input",
            g, w, x, stride=2)
    refused(r"must have the shape \(2, 4, 8, 8\)", "conv2d_grad_weight", x, g, w, padding=1)
    refused("padding must be an int in", "conv2d_grad_input", g, w, x, padding=-1)
    refused("stride must be an int in", "conv2d_grad_weight", x, g, w, stride=2**63)
    refused("channel mismatch", "conv2d_grad_input", g, w,
            gc.placeholder((2, 5, 8, 8), name="x5"))
    big = gc.variable(np.ones((4, 3, 9, 9), "float32"), name="big")
    refused("kernel height 9 is larger than the input size 8", "conv2d_grad_weight", x, g, big)


def test_reshape_counts_elements_with_python_ints():
    v = gc.placeholder((4,), name="v")
    refused("cannot reshape", "reshape", v, shape=(2**62 + 1, 4))
    refused("cannot reshape", "reshape", v, shape=(2**32, 2**32, 4))     # 2**66: no overflow
    refused("must be a tuple of ints", "reshape", v, shape=("4",))
    refused("must be a tuple of ints", "reshape", v, shape=(True, 4))
    refused("cannot reshape", "reshape", v, gc.placeholder((3,), name="like"))
    refused("keepdims_of", "reshape", v, gc.placeholder((4,), name="like"), keepdims_of=(5,))
    assert gc.reshape(v, (2, -1)).shape == (2, 2)


def test_dropout_mask_checks_keep_and_seed():
    refused("seed must be None or an int", "dropout_mask", x, keep=0.5, seed="abc")
    refused("seed must be None or an int", "dropout_mask", x, keep=0.5, seed=-1)
    refused("keep must be a probability", "dropout_mask", x, keep="0.5")
    refused("keep must be a probability", "dropout_mask", x, keep=0.0)
    assert apply("dropout_mask", x, keep=0.5, seed=3).attrs == {"keep": 0.5, "seed": 3}


def saved_and_edited(tmp_path, out, op, change):
    gc.save(out, tmp_path / "g")
    doc = json.loads((tmp_path / "g.json").read_text())
    change(next(r for r in doc["nodes"] if r["op"] == op))
    write_signed(tmp_path / "g.json", doc)
    return tmp_path / "g.json"


def test_a_string_seed_in_a_file_is_refused_at_load(tmp_path):
    out = gc.sum(gc.dropout(gc.placeholder((None, 4), name="h"), 0.5, seed=1))
    path = saved_and_edited(tmp_path, out, "dropout_mask",
                            lambda r: r["attrs"].update(seed="1"))
    with pytest.raises(gc.GraphcError, match="dropout_mask.*seed must be None or an int"):
        gc.load(path)


def test_a_huge_pool_size_in_a_file_is_refused_at_load(tmp_path):
    out = apply("max_pool2d_grad", gc.placeholder((2, 3, 4, 4), name="g"), x, size=2)
    path = saved_and_edited(tmp_path, out, "max_pool2d_grad",
                            lambda r: r["attrs"].update(size=[2**63, 2**63]))
    with pytest.raises(gc.GraphcError, match="max_pool2d_grad.*size must be an int in"):
        gc.load(path)
