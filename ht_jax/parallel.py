"""Data parallelism over every device of every host, with JAX's own multi-controller runtime.

One mesh axis, `data`, spans all devices of all hosts. Episode batches are sharded over it;
parameters and optimiser state are replicated (a few MB; the README's "Scaling out" says when
sharding them would pay). Every host runs the same program and samples only the episodes its own
devices hold, from the pure sampler, so a global batch is the same whatever the number of hosts
and devices, and the per-episode `vmap` and the mean over episodes are those of one device.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ht_jax.model.layers import one_episode_trace
from ht_jax.model.plan import ConfigError

DATA = "data"


def wants_distributed(parallel_cfg) -> bool:
  p = parallel_cfg
  return bool(p.distributed or p.coordinator_address or p.num_processes > 0 or p.process_id >= 0)


def initialize(parallel_cfg) -> None:
  """Joins the other processes (`jax.distributed.initialize`) when the config asks for it.

  Must run before any JAX computation. Unset values (address "", count 0, id -1) are left to
  JAX, which reads them from the environment on Cloud TPU, SLURM and Open MPI.
  """
  if not wants_distributed(parallel_cfg) or jax.distributed.is_initialized():
    return
  p = parallel_cfg
  try:
    jax.distributed.initialize(coordinator_address=p.coordinator_address or None,
                               num_processes=p.num_processes if p.num_processes > 0 else None,
                               process_id=p.process_id if p.process_id >= 0 else None)
  except (ValueError, RuntimeError) as e:   # one sentence instead of the runtime's traceback
    reason = str(e).strip().splitlines()[0].rstrip(".")
    raise ConfigError(
        f"jax.distributed.initialize() failed ({reason}); outside a TPU pod, "
        f"SLURM or Open MPI job set --config.parallel.coordinator_address=HOST:PORT (process 0), "
        f"num_processes and process_id on every process, before anything else uses JAX.") from None


def data_mesh(devices=None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  # Auto axes: plain jit with in/out shardings, the partitioner inserts the gradient all-reduce.
  return jax.make_mesh((len(devices),), (DATA,), axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (episode or task) axis split over `data`."""
  return NamedSharding(mesh, P(DATA))


def check_divisible(global_batch: int, mesh: Mesh, key: str) -> None:
  if global_batch % mesh.size:
    raise ConfigError(
        f"{key}={global_batch} is the global batch and must be a multiple of the device count "
        f"({mesh.size} over {jax.process_count()} process{'es' if jax.process_count() > 1 else ''}); "
        f"set --config.{key} to a multiple of {mesh.size}.")


def local_rows(mesh: Mesh, global_batch: int) -> np.ndarray:
  """The global batch rows (episode indices) held by this process's devices, ascending: host h
  of H takes h * B/H ... (h + 1) * B/H - 1 when the mesh lists devices host by host."""
  index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
  rows = {r for index in index_map.values() for r in range(*index[0].indices(global_batch))}
  return np.asarray(sorted(rows), np.int64)


def global_batch(mesh: Mesh, local: dict[str, np.ndarray], size: int) -> dict[str, jax.Array]:
  """One global array per field from this process's rows (in `local_rows` order)."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:   # the rows are the whole batch; device_put is the cheaper call
    return jax.device_put(local, sharding)
  return {k: jax.make_array_from_process_local_data(sharding, v, (size,) + v.shape[1:])
          for k, v in local.items()}


def replicate(tree, mesh: Mesh):
  """Places identical per-process arrays (same seed, same init) on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


# XLA:CPU hands single convolutions to YNNPACK by default; its kernel gradient of the 84x84 query
# pass ran on one thread, 45 ms of a 145 ms miniImageNet step. Without the INDIVIDUAL_CONVOLUTION
# entry (the rest is XLA's default set) Eigen's convolution runs them: miniImageNet step 1.49x at 1
# episode per step and 1.39x at 4, Omniglot unchanged (README, Speed).
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                        "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def compiler_options() -> dict[str, str] | None:
  return CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None


def jit(fn, mesh: Mesh | None, batch_argnums: tuple[int, ...], donate_argnums: tuple[int, ...] = ()):
  """`jax.jit(fn)`, or with a mesh: arguments in `batch_argnums` sharded over `data`, the others
  and every output replicated (the partitioner turns the mean over episodes into an all-reduce).
  On the CPU with CPU_COMPILER_OPTIONS."""
  if mesh is None:
    return jax.jit(fn, donate_argnums=donate_argnums, compiler_options=compiler_options())
  num_args = len(inspect.signature(fn).parameters)
  in_shardings = tuple(batch_sharding(mesh) if i in batch_argnums else replicated(mesh)
                       for i in range(num_args))
  return jax.jit(fn, in_shardings=in_shardings, out_shardings=replicated(mesh),
                 donate_argnums=donate_argnums, compiler_options=compiler_options())


class StopAgreement:
  """Whether any process asked to stop (SIGTERM, time budget), agreed by all processes.

  One process alone cannot stop: the others would wait for it in the next all-reduce. Each step
  the local flags go into a tiny sharded `any`, read one step later so the device queue never
  runs dry; every process then stops after the same step. With one process the flag is read
  directly, as before.
  """

  def __init__(self, mesh: Mesh):
    self._mesh = mesh
    self._multi = jax.process_count() > 1
    self._pending = None
    self._any = jax.jit(jnp.any, out_shardings=replicated(mesh))

  def __call__(self, local_stop: bool) -> bool:
    if not self._multi:
      return local_stop
    flags = global_batch(self._mesh, {"f": np.full(len(self._mesh.local_devices), local_stop)}, self._mesh.size)
    previous, self._pending = self._pending, self._any(flags["f"])
    return previous is not None and bool(previous)


# --- Episode groups: parallelism inside one CPU device -------------------------------------------

AUTO_GROUPS_CAP = 4   # more compile longer: 16 single episodes took 87 s against 18 s, for 1.07x
# From this image size on, every episode is a group of its own (up to SINGLE_EPISODE_CAP): its
# convolutions then run as lax.conv, which beats the band on 84x84 maps (miniImageNet at 16
# episodes per step 6.0 -> 10.5 episodes/s, compile 27 -> 72-82 s); on Omniglot's 28x28 the band is
# as fast (README, Speed).
SINGLE_EPISODE_IMAGE_SIZE = 64
SINGLE_EPISODE_CAP = 16


def auto_groups(batch: int, mesh: Mesh | None = None, image_size: int = 0) -> int:
  """On one CPU device min(batch, 4), or for images of SINGLE_EPISODE_IMAGE_SIZE and more
  min(batch, 16); else 1. XLA:CPU runs each fused op on one thread and finds its parallelism
  only between independent ops, which independent groups of episodes are; a GPU or TPU spreads
  every op over the chip, and on a mesh each device already has its own slice."""
  one_cpu = (mesh is None or mesh.size == 1) and jax.default_backend() == "cpu"
  if not one_cpu:
    return 1
  cap = SINGLE_EPISODE_CAP if image_size >= SINGLE_EPISODE_IMAGE_SIZE else AUTO_GROUPS_CAP
  return max(1, min(int(batch), cap))


def vmap_in_groups(fn, groups: int):
  """jax.vmap(fn) over the leading axis of every argument, computed as `groups` independent
  slices of near-equal size. The same numbers (up to float summation order) in another schedule.
  A slice of one episode is traced without vmap (one_episode_trace): its generated
  convolutions then have one kernel each and run as lax.conv.
  Each slice is a nested jax.jit, so slices of one size are traced and lowered once: XLA inlines
  them into the same program as before (the same optimised HLO), but miniImageNet's sixteen
  single-episode groups compiled in 165 s against 188 s (36 against 48 s for four)."""
  def one_episode(*args):
    with one_episode_trace():
      return fn(*args)

  def mapped(*args):
    n = args[0].shape[0]
    count = max(1, min(int(groups), n))
    bounds = [g * n // count for g in range(count + 1)]
    # New wrappers for every trace: the trace flags (one_episode_trace, forward_only_trace) are
    # read while tracing and are not part of jit's cache key.
    single, several = jax.jit(one_episode), jax.jit(jax.vmap(fn))
    outputs = []
    for lo, hi in zip(bounds, bounds[1:]):
      if hi - lo == 1:
        outputs.append(jax.tree_util.tree_map(lambda x: x[None], single(*(a[lo] for a in args))))
      else:
        outputs.append(several(*(a[lo:hi] for a in args)))
    return jax.tree_util.tree_map(lambda *x: jnp.concatenate(x), *outputs)
  return mapped
