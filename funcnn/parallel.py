"""Data-parallel training over `jax.devices()` with `jax.sharding` (one host or many).

The batch axis is split across a 1-D device mesh; parameters, model state and optimizer state
are replicated. Under `jit`, XLA turns every reduction over the batch — the mean loss, hence the
gradients, and BatchNorm's batch mean and variance — into an all-reduce, so one data-parallel
step computes exactly what one device computes on the whole batch (up to summation order).

    mesh = fn.parallel.mesh()                     # all devices, axis "batch"
    result = fn.train.fit(model, loss, opt, (x, y), epochs=5, batch_size=256, key=key, mesh=mesh)

On one CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=8` (set before importing jax)
gives 8 devices to try it. Across hosts: start one process per host with the same program and
call, before anything else touches JAX,

    jax.distributed.initialize(coordinator_address="host0:1234", num_processes=N, process_id=i)

then `fn.parallel.mesh()` spans the devices of every process and `fit(..., mesh=mesh)` trains
on all of them; each process holds the (replicated) training arrays. `examples/multihost.py` is
a runnable recipe that starts two CPU processes on one machine.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["BATCH_AXIS", "batch_sharding", "check_batch_size", "data_parallel", "mesh", "replicate",
           "replicated", "shard_batch"]

BATCH_AXIS = "batch"


def mesh(devices=None) -> Mesh:
    """A 1-D mesh named "batch" over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), (BATCH_AXIS,))


def batch_sharding(device_mesh: Mesh) -> NamedSharding:
    """Split the leading (batch) axis across the mesh."""
    return NamedSharding(device_mesh, PartitionSpec(BATCH_AXIS))


def replicated(device_mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(device_mesh, PartitionSpec())


def replicate(tree, device_mesh: Mesh):
    """Place every array of `tree` on every device of the mesh."""
    return jax.device_put(tree, replicated(device_mesh))


def shard_batch(tree, device_mesh: Mesh):
    """Split every array of `tree` along its leading axis across the mesh."""
    return jax.device_put(tree, batch_sharding(device_mesh))


def check_batch_size(batch_size: int, device_mesh: Mesh) -> None:
    if batch_size % device_mesh.size:
        raise ValueError(f"parallel: expected a batch size divisible by the {device_mesh.size} "
                         f"devices of the mesh, received {batch_size}")


def data_parallel(step, device_mesh: Mesh):
    """Wrap a `fn.train.make_step` step: its batch is sharded, its pytrees replicated.

    The arithmetic is unchanged; the sharding constraints tell XLA where each array lives, and
    XLA inserts the all-reduces of the batch means.
    """
    batch, full = batch_sharding(device_mesh), replicated(device_mesh)

    def sharded_step(params, state, opt_state, x, y, key):
        check_batch_size(x.shape[0], device_mesh)
        x, y = jax.lax.with_sharding_constraint((x, y), batch)
        params, state, opt_state, metrics = step(params, state, opt_state, x, y, key)
        params, state, opt_state = jax.lax.with_sharding_constraint((params, state, opt_state), full)
        return params, state, opt_state, metrics

    return sharded_step
