"""What the driver and the workers share: the lazy Dask import, the client, graph payloads.

A graph travels to the workers as the text and arrays `gc.save` writes (no pickled code), so a
worker rebuilds it through the op table and its shape rules, as `gc.load` does for any file.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import threading

import graphc as gc
from graphc.ir import GraphcError

EXTRA = "pip install 'graphc[distributed]'"


def need_dask():
    """The `distributed` module, or a GraphcError naming the extra to install."""
    try:
        import dask.array  # noqa: F401
        import distributed
    except ImportError as e:
        raise GraphcError(f"graphc.distributed needs Dask ({e.name or e} is missing): "
                          f"{EXTRA}") from None
    return distributed


def get_client(client=None):
    """The given client, else the current default one (a GraphcError when there is none)."""
    distributed = need_dask()
    if client is not None:
        return client
    try:
        return distributed.default_client()
    except ValueError:
        raise GraphcError("no Dask client: pass client=Client(...) or create one first "
                          "(Client() starts a local cluster; Client('tcp://host:8786') "
                          "connects to a scheduler)") from None


def forget_plugin(client, name: str, seconds: float) -> None:
    """Unregister a worker plugin, waiting at most `seconds`. The scheduler forgets it at once,
    then waits for every worker's answer, and a worker that hangs (stopped, cut off) answers
    only when the scheduler drops it (worker-ttl, minutes): a fit that had failed on its
    timeout then hung here. The rest finishes in the background."""
    def unregister():
        with contextlib.suppress(Exception):   # the plugin may never have reached a worker
            client.unregister_worker_plugin(name)

    thread = threading.Thread(target=unregister, name="graphc-unregister", daemon=True)
    thread.start()
    thread.join(seconds)


def pack(outputs, updates=()) -> tuple[str, bytes]:
    """A graph as (JSON text, .npz bytes), exactly what gc.save writes to disk."""
    with tempfile.TemporaryDirectory(prefix="graphc-") as folder:
        path = gc.save(list(outputs), os.path.join(folder, "graph"), updates=updates)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        with open(path[:-5] + ".npz", "rb") as f:
            arrays = f.read()
    return text, arrays


def unpack(payload: tuple[str, bytes]) -> gc.Graph:
    """The graph of a payload, rebuilt (and checked) by gc.load."""
    text, arrays = payload
    with tempfile.TemporaryDirectory(prefix="graphc-") as folder:
        path = os.path.join(folder, "graph")
        with open(path + ".json", "w", encoding="utf-8") as f:
            f.write(text)
        with open(path + ".npz", "wb") as f:
            f.write(arrays)
        try:
            loaded = gc.load(path)
        except GraphcError as e:            # the temporary file's name means nothing here
            raise GraphcError(str(e).replace(f"{path}.json: ", "")) from None
    return loaded if isinstance(loaded, gc.Graph) else gc.Graph(loaded)
