"""Where `fit`'s epochs read their batches: the batch size of each epoch, checked, and the data
on the device or streamed from the host in chunks of batches."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import parallel
from funcnn.train.epoch import EpochCarry, epoch_order
from funcnn.train.evaluate import check_count

__all__ = ["TrainingData", "batch_sizes", "prepare"]


def batch_sizes(batch_size, epochs: int, examples: int, mesh=None) -> tuple[int, ...]:
    """B(e) for the epochs e = 1 … `epochs`: `batch_size` itself (an int) or, for a schedule
    (a callable epoch -> int, e.g. `fn.optim.batch_size_schedule`), its value at e — each an
    int in [1, examples], divisible by the mesh's device count."""
    if not callable(batch_size):
        check_count("fit", "batch_size", batch_size, (examples, "the training examples"))
        if mesh is not None:
            parallel.check_batch_size(batch_size, mesh)
        return (int(batch_size),) * epochs
    sizes = []
    for epoch in range(1, epochs + 1):
        size = batch_size(epoch)
        check_count("fit", f"batch_size({epoch}), the schedule's batch size for epoch {epoch},",
                    size, (examples, "the training examples"))
        if mesh is not None and size % mesh.size:
            raise ValueError(f"fit: expected the schedule's batch sizes to be divisible by the "
                             f"{mesh.size} devices of the mesh, received batch_size({epoch}) = "
                             f"{size}")
        sizes.append(int(size))
    return tuple(sizes)


class TrainingData(NamedTuple):
    """The training data where the epochs read it: on the device (`budget` None), or on the host,
    streamed in chunks of at most `budget` bytes (at least one batch)."""

    images: Any
    labels: Any
    place: Callable
    budget: int | None

    def chunk(self, batch_size: int) -> int:
        """Batches per chunk when streaming."""
        nbytes = self.images.nbytes + self.labels.nbytes
        return max(self.budget // max(nbytes * batch_size // len(self.images), 1), 1)

    def order(self, epoch_key, batch_size: int):
        """The epoch's (steps, batch_size) example indices (`epoch_order`), on the device when the
        data is."""
        order = epoch_order(epoch_key, len(self.images), batch_size)
        return order if self.budget is not None else self.place(jnp.asarray(order))

    def run(self, program, carry: EpochCarry, epoch_key, batch_size: int, order=None,
            meanwhile: Callable[[], Any] = lambda: None):
        """One epoch of `program` (compiled for `batch_size`) over `order` (default
        `self.order(epoch_key, batch_size)`): (carry, metrics as numpy rows, meanwhile()).
        `meanwhile` runs after the epoch is dispatched, before its results are awaited: host work
        for the next epoch that overlaps this one's device work (streamed data: after the last
        chunk)."""
        order = self.order(epoch_key, batch_size) if order is None else order
        if self.budget is None:
            carry, metrics = program(self.place(carry), self.images, self.labels, epoch_key, order)
            ahead = meanwhile()
            return carry, jax.tree.map(np.asarray, metrics), ahead
        parts, chunk = [], self.chunk(batch_size)
        for first in range(0, len(order), chunk):
            rows = order[first:first + chunk]
            local = np.arange(rows.size, dtype=np.int32).reshape(rows.shape)
            carry, metrics = program(carry, jnp.asarray(self.images[rows.ravel()]),
                                     jnp.asarray(self.labels[rows.ravel()]), epoch_key,
                                     jnp.asarray(local), first)
            parts.append(jax.tree.map(np.asarray, metrics))
            if int(carry.bad_step) >= 0:   # the remaining chunks do not run: NaN rows
                skipped = len(order) - first - len(rows)
                parts.append(jax.tree.map(lambda m: np.full((skipped, *m.shape[1:]), np.nan,
                                                            m.dtype), parts[-1]))
                break
        return carry, jax.tree.map(lambda *m: np.concatenate(m), *parts), meanwhile()


def prepare(x, y, max_device_bytes: int, mesh) -> TrainingData:
    """x, y on the device (replicated over `mesh`) when they fit in `max_device_bytes`, else on
    the host to be streamed."""
    place = (lambda tree: tree) if mesh is None else (lambda tree: parallel.replicate(tree, mesh))
    nbytes = sum(a.nbytes if hasattr(a, "nbytes") else np.asarray(a).nbytes for a in (x, y))
    if nbytes <= max_device_bytes:
        return TrainingData(place(jnp.asarray(x)), place(jnp.asarray(y)), place, None)
    return TrainingData(np.asarray(x), np.asarray(y), place, max_device_bytes)
