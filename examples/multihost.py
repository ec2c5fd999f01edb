"""Multi-host data parallelism, runnable on one machine: N CPU processes train one model.

Each process calls `jax.distributed.initialize` first; `fn.parallel.mesh()` then spans the
devices of all processes and `fit(..., mesh=mesh)` splits every batch across them. On real
hosts, run the same command on each with its own --process-id and the first host's address.

    python examples/multihost.py --launch 2          # starts processes 0 and 1 locally
    python examples/multihost.py --process-id 0 --num-processes 2 --coordinator host0:12355
"""
import argparse
import os
import subprocess
import sys


def train(process_id, num_processes, coordinator, epochs):
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    import funcnn as fn
    from funcnn import nn

    mesh = fn.parallel.mesh()
    x, y = fn.data.spiral(jax.random.key(0), points_per_class=200)
    model = nn.serial(nn.Dense(64), nn.Relu(), nn.Dense(3))
    result = fn.train.fit(model, fn.losses.softmax_cross_entropy, fn.optim.adam(1e-2), (x, y),
                          epochs=epochs, batch_size=60, key=jax.random.key(0), mesh=mesh,
                          progress=process_id == 0)
    print(f"process {process_id}/{num_processes}: {len(jax.devices())} devices in the mesh, "
          f"{len(jax.local_devices())} local; final training accuracy "
          f"{result.history['accuracy'][-1]:.4f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launch", type=int, help="start this many local processes")
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--coordinator", default="localhost:12355")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    if args.launch:
        workers = [subprocess.Popen([sys.executable, __file__, "--process-id", str(i),
                                     "--num-processes", str(args.launch),
                                     "--coordinator", args.coordinator,
                                     "--epochs", str(args.epochs)], env=dict(os.environ))
                   for i in range(args.launch)]
        sys.exit(max(worker.wait() for worker in workers))
    train(args.process_id, args.num_processes, args.coordinator, args.epochs)


if __name__ == "__main__":
    main()
