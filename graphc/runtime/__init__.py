"""The compiled runtime: lowering to generated NumPy code, memory planning, `gc.function`."""
from graphc.runtime.function import Function, function  # noqa: F401
