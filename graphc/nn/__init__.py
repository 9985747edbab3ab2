"""graphc.nn: layers, initializers, losses, optimizers (as update graphs), training, datasets."""
from graphc.nn import data, init  # noqa: F401
from graphc.nn.layers import (  # noqa: F401
    Conv2D, Dense, Dropout, Flatten, Layer, MaxPool2D, Sequential)
from graphc.nn.losses import binary_cross_entropy, l1, l2, mse, softmax_cross_entropy  # noqa
from graphc.nn.optim import SGD, Adam, Optimizer, RMSProp  # noqa: F401
from graphc.nn.params import load_params, save_params  # noqa: F401
from graphc.nn.recurrent import GRU, LSTM, SimpleRNN  # noqa: F401
from graphc.nn.train import accuracy, evaluate, fit, predict  # noqa: F401

__all__ = ["Layer", "Dense", "Conv2D", "MaxPool2D", "Flatten", "Dropout", "Sequential",
           "mse", "binary_cross_entropy", "softmax_cross_entropy", "l1", "l2",
           "Optimizer", "SGD", "Adam", "RMSProp", "fit", "evaluate", "predict", "accuracy",
           "save_params", "load_params", "data", "init", "SimpleRNN", "LSTM", "GRU"]
