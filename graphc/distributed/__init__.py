"""graphc on Dask: data-parallel `fit` and batch `predict` (optional extra `distributed`).

Importing this package does not import Dask; the functions do, and name the extra to install
when it is missing. Worker-side code lives in `graphc.distributed.replica`.
"""
from graphc.distributed.predict import predict  # noqa: F401
from graphc.distributed.train import fit  # noqa: F401

__all__ = ["fit", "predict"]
