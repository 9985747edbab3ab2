"""Small real models built with onnx's helper API (no torch needed): the seeds' MLP, CNN and
logistic regression, an embedding model and a transformer encoder layer."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(7)
F = TensorProto.FLOAT


def weights(**arrays):
    return [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items()]


def ints(name, values):
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def model(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(nodes, "m", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def w(*shape, scale=0.3):
    return rng.standard_normal(shape) * scale


def mlp():
    """784-128-64-10 with ReLU and softmax, as the seed example (Gemm nodes, transB=1)."""
    n = helper.make_node
    nodes = [n("Gemm", ["x", "W1", "b1"], ["h1"], transB=1), n("Relu", ["h1"], ["a1"]),
             n("Gemm", ["a1", "W2", "b2"], ["h2"], transB=1), n("Relu", ["h2"], ["a2"]),
             n("Gemm", ["a2", "W3", "b3"], ["logits"], transB=1),
             n("Softmax", ["logits"], ["probs"], axis=1)]
    inits = weights(W1=w(128, 784, scale=0.05), b1=w(128), W2=w(64, 128, scale=0.1), b2=w(64),
                    W3=w(10, 64), b3=w(10))
    return model(nodes, [helper.make_tensor_value_info("x", F, ["batch", 784])],
                 [helper.make_tensor_value_info("logits", F, ["batch", 10]),
                  helper.make_tensor_value_info("probs", F, ["batch", 10])], inits)


def cnn():
    """Conv 32 3x3 -> MaxPool 2 -> Conv 64 3x3 -> MaxPool 2 -> Dense 128 -> Dense 10 (28x28)."""
    n = helper.make_node
    nodes = [n("Conv", ["x", "C1", "c1"], ["y1"], kernel_shape=[3, 3]), n("Relu", ["y1"], ["r1"]),
             n("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             n("Conv", ["p1", "C2", "c2"], ["y2"], kernel_shape=[3, 3]), n("Relu", ["y2"], ["r2"]),
             n("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
             n("Flatten", ["p2"], ["f"], axis=1),
             n("Gemm", ["f", "D1", "d1"], ["h"]), n("Relu", ["h"], ["a"]),
             n("Gemm", ["a", "D2", "d2"], ["logits"])]
    inits = weights(C1=w(32, 1, 3, 3), c1=w(32), C2=w(64, 32, 3, 3, scale=0.05), c2=w(64),
                    D1=w(1600, 128, scale=0.02), d1=w(128), D2=w(128, 10, scale=0.1), d2=w(10))
    return model(nodes, [helper.make_tensor_value_info("x", F, ["batch", 1, 28, 28])],
                 [helper.make_tensor_value_info("logits", F, ["batch", 10])], inits)


def logistic():
    n = helper.make_node
    nodes = [n("MatMul", ["x", "W"], ["z0"]), n("Add", ["z0", "b"], ["z"]),
             n("Sigmoid", ["z"], ["p"])]
    return model(nodes, [helper.make_tensor_value_info("x", F, [None, 5])],
                 [helper.make_tensor_value_info("p", F, [None, 1])], weights(W=w(5, 1), b=w(1)))


def embedding():
    """Token ids -> embedding rows (Gather) -> mean over the sequence -> Gemm -> logits."""
    n = helper.make_node
    nodes = [n("Gather", ["E", "ids"], ["emb"], axis=0),
             n("ReduceMean", ["emb", "axes"], ["pooled"], keepdims=0),
             n("Gemm", ["pooled", "W", "b"], ["logits"])]
    inits = weights(E=w(50, 16), W=w(16, 4), b=w(4)) + [ints("axes", [1])]
    return model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, 7])],
                 [helper.make_tensor_value_info("logits", F, [None, 4])], inits, opset=18)


def encoder_layer(d=16, heads=2, t=6, ff=32):
    """Post-norm transformer encoder layer: self-attention, Add+LayerNorm, ReLU FFN, Add+LN."""
    n, hd = helper.make_node, d // heads
    split = ints("split_shape", [0, t, heads, hd])
    merge = ints("merge_shape", [0, t, d])
    nodes = []
    for k in "QKV":
        nodes += [n("MatMul", ["x", f"W{k}"], [f"{k}0"]),
                  n("Reshape", [f"{k}0", "split_shape"], [f"{k}1"]),
                  n("Transpose", [f"{k}1"], [f"{k}h"], perm=[0, 2, 1, 3])]
    nodes += [n("Transpose", ["Kh"], ["Kt"], perm=[0, 1, 3, 2]),
              n("MatMul", ["Qh", "Kt"], ["s0"]), n("Mul", ["s0", "scale"], ["s"]),
              n("Softmax", ["s"], ["att"], axis=-1), n("MatMul", ["att", "Vh"], ["o0"]),
              n("Transpose", ["o0"], ["o1"], perm=[0, 2, 1, 3]),
              n("Reshape", ["o1", "merge_shape"], ["o2"]), n("MatMul", ["o2", "WO"], ["o"]),
              n("Add", ["x", "o"], ["r1"]),
              n("LayerNormalization", ["r1", "g1", "be1"], ["n1"], axis=-1, epsilon=1e-5),
              n("MatMul", ["n1", "F1"], ["f0"]), n("Add", ["f0", "fb1"], ["f1"]),
              n("Relu", ["f1"], ["f2"]), n("MatMul", ["f2", "F2"], ["f3"]),
              n("Add", ["f3", "fb2"], ["f4"]), n("Add", ["n1", "f4"], ["r2"]),
              n("LayerNormalization", ["r2", "g2", "be2"], ["y"], axis=-1, epsilon=1e-5)]
    inits = weights(WQ=w(d, d), WK=w(d, d), WV=w(d, d), WO=w(d, d), F1=w(d, ff), fb1=w(ff),
                    F2=w(ff, d), fb2=w(d), g1=1 + w(d), be1=w(d), g2=1 + w(d), be2=w(d),
                    scale=np.float32(1 / np.sqrt(hd))) + [split, merge]
    return model(nodes, [helper.make_tensor_value_info("x", F, ["batch", t, d])],
                 [helper.make_tensor_value_info("y", F, ["batch", t, d])], inits)
