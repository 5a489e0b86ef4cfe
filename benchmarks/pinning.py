"""A benchmark worker's cores, chosen by its parent (benchmarks.cores.Worker) and set by the worker
itself as its first step, before any library starts threads (XLA:CPU sizes its thread pool to the
cores a process may run on). Setting them in the child this way, instead of in a `preexec_fn`
between fork and exec, keeps the parent safe when it runs threads of its own (JAX under pytest):
Python documents preexec_fn as able to deadlock there."""

from __future__ import annotations

import os

CPUS = "HT_BENCH_CPUS"   # "0,1": the cores, comma-separated


def environment(cores: set[int], env: dict[str, str]) -> dict[str, str]:
  """`env` with the worker's cores in it."""
  return {**env, CPUS: ",".join(str(c) for c in sorted(cores))}


def pin_from_environment() -> None:
  """Restricts this process to the cores in HT_BENCH_CPUS, if set (inherited across exec)."""
  if os.environ.get(CPUS):
    os.sched_setaffinity(0, {int(c) for c in os.environ[CPUS].split(",")})
