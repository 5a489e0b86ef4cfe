"""JAX's training throughput across episodes per step, timed in turns: `python -m
benchmarks.scaling [--config omniglot_1shot_v1] [--episodes 1,4,16,64] [--rounds 10] [--seconds 2]`.

benchmarks.run measures each episodes-per-step setting in its own process, minutes apart; on a
shared machine whose speed drifts by tens of percent over minutes, whether throughput rises from
one row to the next is then partly the hour's drift. Here every setting's step stays warm in its
own worker process on all cores (benchmarks.cores's workers), and each round times one block of
each, one after the other, the order reversed every other round, so drift touches them alike. The
table gives medians over rounds and, for each setting, the median of its per-round ratios to the
first. Writes benchmarks/results/scaling.json.
"""

from __future__ import annotations

if __name__ == "__main__":   # first, before jax loads: the command restarts with mimalloc
  from ht_jax.allocator import restart_with_mimalloc   # (ht_jax/allocator.py; HT_ALLOCATOR=system: off)
  restart_with_mimalloc()

import argparse
import os

from benchmarks import common
from benchmarks.cores import Worker, spread, timed_in_turns


def summarise(rounds: list[dict], settings: list[str]) -> dict:
  """Each setting's episodes/s over rounds (rounds[i][setting]), and the spread of its per-round
  ratios to the first setting."""
  first = settings[0]
  return {"episodes_per_s": {e: spread([r[e] for r in rounds]) for e in settings},
          "over_first": {e: spread([r[e] / r[first] for r in rounds]) for e in settings}}


def measure(config_spec: str, settings: list[int], rounds: int, seconds: float, env: dict | None = None) -> dict:
  """`env`: the workers' environment (default this process's: JAX on its default backend, a GPU
  where there is one). Settings are keyed by their decimal strings, as scaling.json has them."""
  cores = set(os.sched_getaffinity(0))
  # A worker holds only the device memory it uses, where each would otherwise reserve 75% of a GPU's.
  env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", **(os.environ if env is None else env)}
  names = [str(e) for e in settings]
  workers = {}
  try:
    # All compile at once (compiling is not timed); each then waits, warm, for its blocks.
    for name, e in zip(names, settings):
      workers[name] = Worker(cores, config_spec, e, env=env)
    for w in workers.values():
      w.wait_ready()
    steps, results = timed_in_turns(workers, dict(zip(names, settings)), names, rounds, seconds)
  finally:
    for w in workers.values():
      w.close()
  return {"config": config_spec, "episodes_per_step": settings, "cores": len(cores),
          "steps_per_block": steps, "rounds": results, **summarise(results, names)}


def table(result: dict) -> str:
  first = result["episodes_per_step"][0]
  lines = [f"| {result['config']}, ht_jax, {result['cores']} cores, episodes/step | episodes/s median (min-max) "
           f"| against {first} per step (per-round ratios: median, min-max) |", "|---|---|---|"]
  for e in result["episodes_per_step"]:
    r, x = result["episodes_per_s"][str(e)], result["over_first"][str(e)]
    lines.append(f"| {e} | {r['median']:.1f} ({r['min']:.1f}-{r['max']:.1f}) "
                 f"| {x['median']:.2f}x ({x['min']:.2f}-{x['max']:.2f}) |")
  lines.append(f"\n{len(result['rounds'])} rounds, each setting's blocks about the same length.")
  return "\n".join(lines)


def episode_settings(text: str) -> list[int]:
  try:
    settings = [int(s) for s in text.split(",")]
  except ValueError:
    settings = []
  if not settings or min(settings) < 1 or len(set(settings)) != len(settings):
    raise argparse.ArgumentTypeError(f"--episodes {text!r}: give distinct whole numbers of at least 1, "
                                     f"separated by commas, e.g. 1,4,16,64.")
  return settings


def main():
  parser = argparse.ArgumentParser(description=common.cli_description(__doc__))
  parser.add_argument("--config", default="omniglot_1shot_v1", help="a configs/ name, optionally name:arg")
  parser.add_argument("--episodes", type=episode_settings, default=[1, 4, 16, 64],
                      help="episodes per step, comma-separated; ratios are to the first")
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--seconds", type=float, default=2.0, help="length of one timed block")
  args = parser.parse_args()
  if args.rounds < 1 or args.seconds <= 0:
    raise SystemExit("benchmarks.scaling needs --rounds of at least 1 and --seconds above 0.")
  result = measure(args.config, args.episodes, args.rounds, args.seconds)
  common.report("scaling", result, table(result))


if __name__ == "__main__":
  main()
