"""JAX against torch, trained in turns: `python -m benchmarks.head_to_head [--config
omniglot_1shot_v1] [--episodes 16] [--rounds 10] [--seconds 2]`.

benchmarks.run times each framework in its own process, one after the other; on a shared machine
whose speed drifts by tens of percent over minutes, the ratio of two such rows carries that drift.
Here both training steps stay warm in two worker processes on all cores, and each round times one
block of each, back to back, the order flipped every round, so drift touches both alike; the table
gives medians over rounds and the median of the per-round JAX/torch ratios. torch runs the faster
of its two modes (benchmarks.train: looping or batching the episodes), chosen by one block of each
before JAX's worker starts. Writes benchmarks/results/head_to_head.json.
"""

from __future__ import annotations

if __name__ == "__main__":   # first, before jax or torch loads: the command restarts with mimalloc
  from benchmarks.pinning import pin_from_environment   # a worker: on the cores its parent chose
  pin_from_environment()
  from ht_jax.allocator import restart_with_mimalloc   # (ht_jax/allocator.py; HT_ALLOCATOR=system: off)
  restart_with_mimalloc()

import argparse
import os
import threading

from benchmarks import common
from benchmarks.cores import Worker, rounds_parser, serve, spread, timed_in_turns, warm_jax_training

FRAMEWORKS = ("jax", "torch")


def training_steps(framework: str, config_spec: str, episodes: int, probe_seconds: float):
  """run_steps(k) of the framework's warm training step, its mode (torch: the faster one) and its
  compile_s (JAX: compiling and the first step; torch: the mode's first step)."""
  if framework == "jax":
    training = warm_jax_training(config_spec, episodes)
    return training.run_steps, "jit", training.compile_s
  from benchmarks.train import probe_torch_modes, torch_training
  runners, first_step_s, warm_step_s = torch_training(config_spec, episodes)
  mode, _, _ = probe_torch_modes(runners, warm_step_s, episodes, probe_seconds)
  return runners[mode], mode, first_step_s[mode]


def worker(framework: str, config_spec: str, episodes: int, probe_seconds: float) -> None:
  """Builds and warms the step, prints its mode, then serves timed blocks (cores.serve)."""
  run_steps, mode, compile_s = training_steps(framework, config_spec, episodes, probe_seconds)
  print("mode", mode, compile_s, flush=True)
  serve(run_steps, episodes)


def summarise(rounds: list[dict[str, float]]) -> dict:
  """Medians (and ranges) over rounds of each framework's episodes/s, and the median of the
  per-round JAX/torch ratios."""
  out = {f: spread([r[f] for r in rounds]) for f in FRAMEWORKS}
  out["jax_over_torch"] = spread([r["jax"] / r["torch"] for r in rounds])
  return out


def mode_line(notes: list[str]) -> tuple[str, float]:
  """The worker's mode and compile_s from what it printed before "ready"."""
  for line in reversed(notes):
    if line.startswith("mode "):
      _, mode, compile_s = line.split()
      return mode, float(compile_s)
  raise RuntimeError(f"a benchmark worker did not say its mode before it was ready (it printed {notes!r}).")


def measure(config_spec: str, episodes: int, rounds: int, seconds: float, env: dict | None = None,
            timeout: float | None = None) -> dict:
  """`env`: the workers' environment (default this process's): on a GPU machine JAX's worker
  takes the GPU, torch's stays on the CPU, as in benchmarks.train. After `timeout` seconds the
  workers are killed and this raises RuntimeError."""
  cores = set(os.sched_getaffinity(0))
  workers, modes, compile_s = {}, {}, {}
  watchdog = threading.Timer(timeout, lambda: [w.close() for w in list(workers.values())]) if timeout else None
  if watchdog:
    watchdog.start()
  try:
    # One after the other: torch picks its mode while the JAX worker is not yet compiling.
    for framework in reversed(FRAMEWORKS):
      workers[framework] = Worker(cores, config_spec, episodes, module="benchmarks.head_to_head",
                                  extra=("--framework", framework, "--seconds", str(seconds)),
                                  env=dict(os.environ) if env is None else env)
      workers[framework].wait_ready()
      modes[framework], compile_s[framework] = mode_line(workers[framework].notes)
    steps, results = timed_in_turns(workers, {f: episodes for f in FRAMEWORKS}, list(FRAMEWORKS), rounds, seconds)
  except RuntimeError:
    if watchdog and not watchdog.is_alive():
      raise RuntimeError(f"the head-to-head took over {timeout:.0f} s; its workers were stopped.") from None
    raise
  finally:
    if watchdog:
      watchdog.cancel()
    for w in workers.values():
      w.close()
  return {"config": config_spec, "episodes_per_step": episodes, "cores": len(cores), "torch_mode": modes["torch"],
          "compile_s": compile_s,
          "steps_per_block": steps, "rounds": results, **summarise(results)}


def table(result: dict) -> str:
  lines = [f"| {result['config']}, {result['episodes_per_step']} episodes/step, {result['cores']} cores "
           f"| episodes/s median (min-max) |", "|---|---|"]
  for framework in FRAMEWORKS:
    r = result[framework]
    name = f"ht_torch ({result['torch_mode']})" if framework == "torch" else "ht_jax"
    lines.append(f"| {name} | {r['median']:.1f} ({r['min']:.1f}-{r['max']:.1f}) |")
  ratio = result["jax_over_torch"]
  lines.append(f"\nJAX/torch: {ratio['median']:.2f}x (per-round ratios {ratio['min']:.2f}-{ratio['max']:.2f}, "
               f"median of {len(result['rounds'])} rounds).")
  return "\n".join(lines)


def main():
  parser = rounds_parser(__doc__, "length of one timed block")
  parser.add_argument("--framework", choices=FRAMEWORKS, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.rounds < 1 or args.episodes < 1 or args.seconds <= 0:
    raise SystemExit("benchmarks.head_to_head needs --rounds and --episodes of at least 1 and --seconds above 0.")
  if args.worker:
    return worker(args.framework, args.config, args.episodes, args.seconds)
  result = measure(args.config, args.episodes, args.rounds, args.seconds)
  common.report("head_to_head", result, table(result))


if __name__ == "__main__":
  main()
