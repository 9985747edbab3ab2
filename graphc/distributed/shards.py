"""The training rows as chunks held by the workers, and which rows of a batch each one has.

NumPy rows are cut into chunks the driver submits (the scheduler keeps them, so a chunk lost
with its worker is made again); Dask arrays keep their row chunks and their own lineage.
Each chunk has an owner, the worker whose replica computes the gradient of its rows.
"""
from __future__ import annotations

import numpy as np

CHUNK_BYTES = 4 << 20     # NumPy chunks stay small enough for Dask to ship as task arguments


def is_dask(a) -> bool:
    return hasattr(a, "dask") and hasattr(a, "chunks") and hasattr(a, "to_delayed")


class Shards:
    """Futures of chunks (inputs, targets), their first rows (`bounds`) and owners."""

    def __init__(self, client, arrays: list, workers: list[str]):
        from graphc.distributed import replica
        self.client, self.workers = client, list(workers)
        k = len(self.workers)
        lazy = any(is_dask(a) for a in arrays)
        if lazy:
            pieces, sizes = dask_pieces(arrays)
        else:
            row_bytes = max(1, sum(a[:1].nbytes for a in arrays))
            rows = max(1, min(-(-len(arrays[0]) // k), CHUNK_BYTES // row_bytes))
            pieces = [tuple(a[s:s + rows] for a in arrays)
                      for s in range(0, len(arrays[0]), rows)]
            sizes = [len(p[0]) for p in pieces]
        self.bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.owners = [self.workers[i % k] for i in range(len(pieces))]
        if lazy:
            import dask
            self.futures = [client.compute(dask.delayed(replica.bundle)(*piece), workers=[w],
                                           allow_other_workers=True)
                            for piece, w in zip(pieces, self.owners)]
        else:
            self.futures = [client.submit(replica.bundle, *piece, workers=[w],
                                          allow_other_workers=True, pure=False)
                            for piece, w in zip(pieces, self.owners)]

    def split(self, idx: np.ndarray, workers: list[str]) -> dict:
        """worker -> (its chunks with rows in the batch, the rows of each, batch positions)."""
        chunk_of = np.searchsorted(self.bounds, idx, side="right") - 1
        shares = {w: ([], [], []) for w in workers}
        for c in np.unique(chunk_of):
            positions = np.flatnonzero(chunk_of == c)
            chunks, rows, where = shares[self.owners[c]]
            chunks.append(self.futures[c])
            rows.append(idx[positions] - self.bounds[c])
            where.append(positions)
        return {w: (chunks, rows, np.concatenate(where) if where else np.empty(0, np.int64))
                for w, (chunks, rows, where) in shares.items()}

    def reassign(self, workers: list[str], rebalance: bool = False) -> None:
        """Chunks of workers that left go to the least loaded (rebalance: even out all)."""
        self.workers = list(workers)
        load = {w: 0 for w in workers}
        for c, w in enumerate(self.owners):
            if w in load:
                load[w] += 1
        for c, w in enumerate(self.owners):
            fair = -(-len(self.owners) // len(workers))
            if w not in load or (rebalance and load[w] > fair):
                if w in load:
                    load[w] -= 1
                self.owners[c] = min(workers, key=lambda v: (load[v], v))
                load[self.owners[c]] += 1

    def release(self) -> None:
        self.client.cancel(self.futures)


def dask_pieces(arrays: list):
    """Row chunks of Dask (or NumPy) arrays as tuples of Delayed, all chunked like the first
    Dask one."""
    import dask.array as da
    first = next(a for a in arrays if is_dask(a))
    first = first.rechunk({i: -1 for i in range(1, first.ndim)})
    rows = first.chunks[0]
    blocks = [da.asarray(a).rechunk((rows,) + tuple(-1 for _ in range(1, np.ndim(a))))
              .to_delayed().ravel() for a in arrays]
    return list(zip(*blocks)), list(rows)
