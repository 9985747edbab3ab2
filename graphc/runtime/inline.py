"""Python source for objects, so that a standalone module can remake them: literals, arrays
(kept aside for an .npz), NumPy and standard-library names (imports), and Python functions with
their source inlined, with every global name they read (lambdas by their text, closures and
loop-made lambdas by a factory that sets their free names). A name is bound once: two different
objects wanting one module-level name is an error, never a silent shadowing.
"""
from __future__ import annotations

import ast
import builtins
import dis
import functools
import importlib
import inspect
import linecache
import math
import os
import sys
import textwrap
import threading
import types

import numpy as np

from graphc.ir import GraphcError

RESERVED = object()          # stands for a name the caller defines itself


def generator(state):
    """A NumPy generator that continues from a saved state (a random op's, at export time)."""
    g = np.random.Generator(getattr(np.random, state["bit_generator"])())
    g.bit_generator.state = state
    return g


class Writer:
    """The module being written: imports, definitions (each after what it needs), the arrays
    for the .npz, and which global name stands for which object (a name used twice for two
    different objects is an error, never a silent shadowing)."""

    def __init__(self, reserved):
        self.imports = ["import functools", "import os", "import threading", "import types",
                        "", "import numpy as np"]
        self.bound: dict[str, object] = {"functools": functools, "os": os,
                                         "threading": threading, "types": types, "np": np}
        for name in reserved:
            self.bound[name] = RESERVED
        self.defs: list[str] = []
        self.arrays: dict[str, np.ndarray] = {}
        self.array_keys: dict[int, str] = {}      # id(array) -> its key in `arrays`
        self.known: dict[int, str] = {}           # id(object) -> expression already written
        self.keep: list = []                      # objects whose id is in `known`
        self.count = 0

    # names ------------------------------------------------------------------------------
    def bind(self, name: str, obj, ctx: str) -> None:
        """Make the module-level `name` stand for obj (an import, a definition)."""
        if name in self.bound:
            if self.bound[name] is obj:
                return
            raise GraphcError(f"export: {ctx} needs the name {name!r} for {describe(obj)}, "
                              f"but the module already uses it for "
                              f"{describe(self.bound[name])}")
        self.bound[name] = obj
        if inspect.ismodule(obj):
            root = obj.__name__.split(".")[0]
            if root not in ("numpy",) and root not in sys.stdlib_module_names:
                raise GraphcError(f"export: {ctx} uses the module {obj.__name__} (only NumPy "
                                  f"and the standard library can be imported)")
            self.imports.append(f"import {obj.__name__}" if name == obj.__name__
                                else f"import {obj.__name__} as {name}")
        elif plain_function(obj) and obj.__name__ == name:
            self.define(obj, ctx)
        elif inspect.isclass(obj) and issubclass(obj, BaseException) \
                and importable(obj) is None and obj.__name__ == name:
            bases = ", ".join(self.expr(b, ctx) for b in obj.__bases__)
            doc = (obj.__doc__ or "").strip().split("\n")[0] or "An error."
            doc = f'"""{doc}"""' if '"""' not in doc and "\\" not in doc else repr(doc)
            self.defs.append(f"class {name}({bases}):\n    {doc}")
        elif inspect.isclass(obj) and importable(obj) is None and obj.__name__ == name \
                and obj.__qualname__ == name:
            self.define_class(obj, ctx)
        elif importable(obj) is not None:
            module, attr = importable(obj)
            self.imports.append(f"from {module} import {attr}" if attr == name
                                else f"from {module} import {attr} as {name}")
        else:
            self.defs.append(f"{name} = {self.expr(obj, ctx)}")

    def define(self, f, ctx: str) -> None:
        """A module-level function, its source as written, after what it reads."""
        source = source_of(f, ctx)
        if pinned_defaults(f, source):
            self.defs.append(f"{f.__name__} = {self.made_function(f, ctx)}")
            return
        self.needs(f, source, ctx)
        self.defs.append(source)

    def define_class(self, cls, ctx: str) -> None:
        """A module-level class, its source as written, after its bases and what its
        methods read."""
        source = source_of(cls, ctx)
        for base in cls.__bases__:
            self.expr(base, ctx)
        for attr in vars(cls).values():
            if inspect.isfunction(attr):
                self.needs(attr, source_of(attr, ctx), ctx)
        self.defs.append(source)

    def needs(self, f, source: str, ctx: str, skip=()) -> None:
        """Bind every global name f's code (and its default values) reads."""
        for name in global_names(f, source, ctx):
            if name in f.__globals__ and name not in skip:
                self.bind(name, f.__globals__[name], f"{ctx} ({f.__qualname__})")

    # expressions ------------------------------------------------------------------------
    def expr(self, obj, ctx: str) -> str:
        """A Python expression that makes obj in the module."""
        if id(obj) in self.known:
            return self.known[id(obj)]
        if obj is None or isinstance(obj, (bool, int, str, bytes)):
            return repr(obj)
        if isinstance(obj, float):
            return repr(obj) if math.isfinite(obj) else f"float({str(obj)!r})"
        if isinstance(obj, np.ndarray):
            return self.array(obj, ctx)
        if isinstance(obj, np.dtype):
            return f"np.dtype({obj.name if obj.isbuiltin else obj.str!r})"
        if isinstance(obj, np.generic):
            return f"np.{type(obj).__name__}({self.expr(obj.item(), ctx)})"
        if isinstance(obj, tuple):
            items = [self.expr(x, ctx) for x in obj]
            return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
        if isinstance(obj, list):
            return f"[{', '.join(self.expr(x, ctx) for x in obj)}]"
        if isinstance(obj, dict):
            return "{" + ", ".join(f"{self.expr(k, ctx)}: {self.expr(v, ctx)}"
                                   for k, v in obj.items()) + "}"
        if isinstance(obj, slice):
            return f"slice({self.expr(obj.start, ctx)}, {self.expr(obj.stop, ctx)}, " \
                   f"{self.expr(obj.step, ctx)})"
        if isinstance(obj, functools.partial):
            args = [self.expr(obj.func, ctx)] + [self.expr(a, ctx) for a in obj.args] \
                + [f"{k}={self.expr(v, ctx)}" for k, v in obj.keywords.items()]
            return f"functools.partial({', '.join(args)})"
        if isinstance(obj, np.vectorize) and not obj.excluded:
            more = "".join(f", {k}={self.expr(getattr(obj, k), ctx)}"
                           for k in ("otypes", "signature") if getattr(obj, k) is not None)
            return f"np.vectorize({self.expr(obj.pyfunc, ctx)}{more})"
        if isinstance(obj, np.random.Generator):   # one object, whoever reads it (plans)
            self.bind("generator", generator, ctx)
            self.count += 1
            name = f"rng_{self.count}"
            if name in self.bound:
                raise GraphcError(f"export: {ctx}: the name {name!r} is taken")
            self.bound[name] = obj
            self.defs.append(f"{name} = generator({self.expr(obj.bit_generator.state, ctx)})")
            return self.remember(obj, name)
        # builtins first: np.object (the base of a class) is a deprecated name that warns
        if getattr(builtins, getattr(obj, "__name__", ""), None) is obj:
            return obj.__name__
        if getattr(np, getattr(obj, "__name__", ""), None) is obj:
            return f"np.{obj.__name__}"
        if inspect.isfunction(obj) and (obj.__name__ == "<lambda>" or obj.__closure__
                                        or obj.__qualname__ != obj.__name__):
            return self.remember(obj, self.made_function(obj, ctx))
        if plain_function(obj) or importable(obj) is not None or (
                inspect.isclass(obj) and issubclass(obj, BaseException)):
            self.bind(obj.__name__, obj, ctx)
            return obj.__name__
        raise GraphcError(f"export: {ctx} holds {describe(obj)}, which cannot be written as "
                          f"Python source")

    def remember(self, obj, text: str) -> str:
        self.known[id(obj)] = text
        self.keep.append(obj)
        return text

    def array(self, arr: np.ndarray, ctx: str, key: str | None = None) -> str:
        if arr.dtype.hasobject:
            raise GraphcError(f"export: {ctx} holds an array of Python objects")
        if id(arr) in self.array_keys:       # one array read by several plans: stored once
            return f"ARRAYS[{self.array_keys[id(arr)]!r}]"
        if key is None:
            key = f"a{len(self.arrays)}"
            while key in self.arrays:
                key += "_"
        self.arrays[key] = arr
        self.array_keys[id(arr)] = key
        self.keep.append(arr)
        return f"ARRAYS[{key!r}]"

    def made_function(self, f, ctx: str) -> str:
        """A lambda as its expression; a closure (or a function whose defaults name values
        that have changed since) made by a factory that sets those names to their values."""
        if f.__name__ == "<lambda>":
            source = lambda_source(f, ctx)
        else:
            source = source_of(f, ctx)
        pinned = pinned_defaults(f, source)
        self.needs(f, source, ctx, skip=pinned)
        if not f.__closure__ and not pinned:
            return f"({source})"
        self.count += 1
        tag = "lambda" if f.__name__ == "<lambda>" else f.__name__
        factory, made = f"make_{tag}_{self.count}", f"{tag}_{self.count}"
        for name in (factory, made):
            if name in self.bound:
                raise GraphcError(f"export: {ctx}: the name {name!r} is taken")
            self.bound[name] = (f, name)
        lines = [f"def {factory}():"]
        values = dict(zip(f.__code__.co_freevars, f.__closure__ or ()))
        values = {k: c.cell_contents for k, c in values.items()} | pinned
        for var, value in values.items():
            lines.append(f"    {var} = {self.expr(value, ctx)}")
        if f.__name__ == "<lambda>":
            lines.append(f"    return ({source})")
        else:
            lines += [textwrap.indent(source, "    "), f"    return {f.__name__}"]
        self.defs.append("\n".join(lines) + f"\n\n\n{made} = {factory}()")
        return made


def describe(obj) -> str:
    if obj is RESERVED:
        return "its own use"
    if isinstance(obj, tuple) and len(obj) == 2 and inspect.isfunction(obj[0]):
        return f"a function made from {obj[0].__qualname__}"
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    kind = type(obj).__name__
    module = getattr(obj, "__module__", None)
    return f"{kind} {module + '.' if module else ''}{name}" if name else f"a {kind} object"


def plain_function(obj) -> bool:
    """A module-level Python function: its source can be written as it is."""
    return inspect.isfunction(obj) and obj.__name__ != "<lambda>" and not obj.__closure__ \
        and obj.__qualname__ == obj.__name__


def importable(obj):
    """(module, name) when obj is a NumPy or standard-library object other than a module
    that is reachable under its own name from the module that defines it."""
    module, name = getattr(obj, "__module__", None), getattr(obj, "__name__", None)
    if not isinstance(module, str) or not isinstance(name, str) or inspect.ismodule(obj):
        return None
    root = module.split(".")[0]
    if root != "numpy" and (root not in sys.stdlib_module_names or root == "__main__"):
        return None
    try:
        found = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
    return (module, name) if found is obj else None


def source_of(f, ctx: str) -> str:
    try:
        source = textwrap.dedent(retried(inspect.getsource, f))
    except (OSError, TypeError):
        raise GraphcError(f"export: {ctx} calls {f.__qualname__} (from {f.__module__}), "
                          f"whose source is not available (defined interactively?): "
                          f"define it in a file") from None
    if source.startswith("@"):
        raise GraphcError(f"export: {ctx} calls {f.__qualname__}, a decorated function "
                          f"(only plain functions are written out)")
    return source.rstrip() + "\n"


def retried(parse, *args):
    """parse(*args) (ast.parse, inspect.getsource), again on a SystemError: CPython 3.11 keeps
    the AST constructor's recursion depth in one global, and another thread parsing at the same
    moment made it raise "AST constructor recursion depth mismatch" (gh-106905), once in a
    full test run."""
    for attempt in range(3):
        try:
            return parse(*args)
        except SystemError:
            if attempt == 2:
                raise


@functools.lru_cache(maxsize=None)
def parsed(filename: str):
    return retried(ast.parse, "".join(linecache.getlines(filename)))


def lambda_source(f, ctx: str) -> str:
    """The text of a lambda, found in its file's syntax tree by line and compiled code."""
    filename = f.__code__.co_filename
    try:
        tree = parsed(filename)
    except (SyntaxError, ValueError):
        tree = None
    found = []
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.Lambda) and node.lineno == f.__code__.co_firstlineno:
            code = compile(ast.Expression(node), filename, "eval")
            inner = next(c for c in code.co_consts if isinstance(c, types.CodeType))
            if same_code(inner, f.__code__):
                found.append(ast.get_source_segment("".join(linecache.getlines(filename)),
                                                    node))
    if not found:
        raise GraphcError(f"export: {ctx} calls a lambda (from {f.__module__}) whose source "
                          f"is not available: define it in a file")
    return found[0]


def pinned_defaults(f, source: str) -> dict:
    """Defaults written as a bare name whose global value is not the one f holds (`lambda x,
    _fn=_fn: ...` made in a loop): name -> the value f holds."""
    if not (f.__defaults__ or f.__kwdefaults__):
        return {}
    a = function_node(f, source).args
    pairs = list(zip(a.defaults, f.__defaults__ or ()))
    kw = f.__kwdefaults__ or {}
    pairs += [(d, kw.get(arg.arg)) for arg, d in zip(a.kwonlyargs, a.kw_defaults)
              if d is not None]
    missing = object()
    return {d.id: value for d, value in pairs
            if isinstance(d, ast.Name) and f.__globals__.get(d.id, missing) is not value}


def function_node(f, source: str):
    tree = retried(ast.parse, source if f.__name__ != "<lambda>" else f"({source})")
    return next(n for n in ast.walk(tree)
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))


def same_code(a, b) -> bool:
    """Two compilations of one lambda (the bytecode may differ with the source positions)."""
    key = lambda c: (c.co_names, c.co_varnames, c.co_argcount, c.co_kwonlyargcount,  # noqa
                     c.co_freevars, [x for x in c.co_consts if not isinstance(x, types.CodeType)])
    return key(a) == key(b)


def global_names(f, source: str, ctx: str) -> list[str]:
    """The global names f's code reads, and those its default values name."""
    names: list[str] = []
    codes = [f.__code__]
    while codes:
        code = codes.pop()
        for ins in dis.get_instructions(code):
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME", "STORE_GLOBAL"):
                names.append(ins.argval)
            elif ins.opname == "IMPORT_NAME" and ins.argval.split(".")[0] == "graphc":
                raise GraphcError(f"export: {ctx} calls {f.__qualname__}, which imports "
                                  f"{ins.argval} when it runs (the module must run without "
                                  f"graphc)")
        codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
    if f.__defaults__ or f.__kwdefaults__:
        fn = function_node(f, source)
        for default in fn.args.defaults + [d for d in fn.args.kw_defaults if d is not None]:
            names += [n.id for n in ast.walk(default) if isinstance(n, ast.Name)]
    return list(dict.fromkeys(names))
