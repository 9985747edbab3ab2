"""graphc.nn: layers, models, initializers, losses, optimizers (as update graphs), training,
datasets."""
from graphc.nn import data, init  # noqa: F401
from graphc.nn.module import ACTIVATIONS, Layer, Model, Sequential  # noqa: F401
from graphc.nn.layers import (  # noqa: F401
    Activation, Conv2D, Dense, Dropout, Embedding, Flatten, MaxPool2D)
from graphc.nn.norm import BatchNorm, LayerNorm, RMSNorm  # noqa: F401
from graphc.nn.attention import MultiHeadAttention  # noqa: F401
from graphc.nn.losses import binary_cross_entropy, l1, l2, mse, softmax_cross_entropy  # noqa
from graphc.nn.optim import SGD, Adam, Optimizer, RMSProp  # noqa: F401
from graphc.nn.params import load_params, save_params  # noqa: F401
from graphc.nn.recurrent import GRU, LSTM, SimpleRNN  # noqa: F401
from graphc.nn.train import accuracy, evaluate, fit, predict  # noqa: F401

__all__ = ["Layer", "Model", "Sequential", "Dense", "Conv2D", "MaxPool2D", "Flatten",
           "Dropout", "Activation", "Embedding", "LayerNorm", "RMSNorm", "BatchNorm",
           "MultiHeadAttention",
           "ACTIVATIONS", "mse", "binary_cross_entropy", "softmax_cross_entropy", "l1", "l2",
           "Optimizer", "SGD", "Adam", "RMSProp", "fit", "evaluate", "predict", "accuracy",
           "save_params", "load_params", "data", "init", "SimpleRNN", "LSTM", "GRU"]
