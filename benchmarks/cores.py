"""How much of the cores does one JAX process use? `python -m benchmarks.cores [--config
omniglot_1shot_v1] [--episodes 16] [--rounds 10] [--seconds 2] [--cores K]`.

Starts K + 1 worker processes of the same compiled training step, K the cores this process may
use: one pinned to each core, and one free on all K (XLA:CPU sizes its thread pool to the cores a
process may run on, so a pinned worker runs every op on one thread). Each round times the first
pinned worker alone (one core), then all K pinned workers at the same time (independent
single-threaded streams that share only the machine), then the free worker (one process and its
K threads). The three alternate, so the machine's drift touches them alike; the table gives
medians over rounds and the medians of the per-round ratios. Writes benchmarks/results/cores.json.
"""

from __future__ import annotations

if __name__ == "__main__":   # first, before jax loads: the command restarts with mimalloc
  from benchmarks.pinning import pin_from_environment   # a worker: on the cores its parent chose
  pin_from_environment()
  from ht_jax.allocator import restart_with_mimalloc   # (ht_jax/allocator.py; HT_ALLOCATOR=system: off)
  restart_with_mimalloc()

import argparse
import os
import statistics
import subprocess
import sys
import time

from benchmarks import common, pinning


def worker(config_spec: str, episodes: int) -> None:
  """Compiles the step, prints "ready" and the cores it may run on, then for each stdin line N
  runs N steps and prints the episodes per second. On the cores the parent chose, set at its
  start (benchmarks.pinning) before JAX starts its threads."""
  serve(warm_jax_training(config_spec, episodes).run_steps, episodes)


def warm_jax_training(config_spec: str, episodes: int) -> common.JaxTraining:
  """A worker's JAX step: compiled over two batches, then warmed up (common.warm_up)."""
  training = common.JaxTraining(common.load_config(config_spec), episodes, batch_count=2)
  common.warm_up(training.run_steps)
  return training


def serve(run_steps, episodes: int) -> None:
  """A worker's side of Worker: prints "ready" and the cores it may run on, then for each stdin
  line N runs N steps and prints the episodes per second."""
  print("ready", *sorted(os.sched_getaffinity(0)), flush=True)
  for line in sys.stdin:
    started = time.perf_counter()
    run_steps(int(line))
    print(f"{int(line) * episodes / (time.perf_counter() - started):.4f}", flush=True)


class Worker:
  """A worker process, on the given cores, driven over its stdin and stdout: `module`'s --worker
  mode (this one's, as benchmarks.scaling uses it too, or benchmarks.head_to_head's with `extra`
  arguments). `env` defaults to this process's with JAX on the CPU (what benchmarks.cores
  measures); head_to_head and scaling pass their own."""

  def __init__(self, cores: set[int], config_spec: str, episodes: int, module: str = "benchmarks.cores",
               extra: tuple[str, ...] = (), env: dict | None = None):
    self.module = module
    self.notes: list[str] = []   # what the worker printed before "ready"
    self.process = subprocess.Popen(
        [sys.executable, "-m", module, "--worker", "--config", config_spec, "--episodes", str(episodes), *extra],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=common.REPO,
        env=pinning.environment(cores, {**os.environ, "JAX_PLATFORMS": "cpu"} if env is None else env))

  def wait_ready(self) -> list[int]:
    """Blocks until the worker has compiled; the cores it runs on."""
    for line in self.process.stdout:
      if line.startswith("ready"):
        return [int(c) for c in line.split()[1:]]
      self.notes.append(line.strip())
    raise RuntimeError(f"a benchmark worker exited with status {self.process.wait()} before its first step; "
                       f"run `python -m {self.module} --worker` alone to see its error.")

  def start(self, steps: int) -> None:
    try:
      self.process.stdin.write(f"{steps}\n")
      self.process.stdin.flush()
    except OSError:   # it has died (a broken pipe): say so as rate() would
      raise RuntimeError(f"a benchmark worker exited with status {self.process.wait()} between blocks; "
                         f"run `python -m {self.module} --worker` alone to see its error.") from None

  def rate(self) -> float:
    line = self.process.stdout.readline()
    if not line:
      raise RuntimeError(f"a benchmark worker exited with status {self.process.wait()} while training; "
                         f"run `python -m {self.module} --worker` alone to see its error.")
    return float(line)

  def steps_per_block(self, seconds: float, episodes: int) -> int:
    """Steps for a block of about `seconds`, from one untimed block of 2 (at least 2)."""
    self.start(2)
    return max(2, round(seconds * self.rate() / episodes))

  def close(self) -> None:
    self.process.kill()
    self.process.wait()


def timed_in_turns(workers: dict, episodes: dict, order: list, rounds: int, seconds: float):
  """Times warm workers (name -> Worker) in turns: each one's steps per block sized to about
  `seconds` from one short block, then per round one block of each, in `order`, reversed every
  other round, so the machine's drift touches them alike. Returns the steps per block and, per
  round, {"first": name, name: episodes/s, ...}."""
  steps = {}
  for name, w in workers.items():
    steps[name] = w.steps_per_block(seconds, episodes[name])
  results = []
  for i in range(rounds):
    turn = order if i % 2 == 0 else order[::-1]
    row = {"first": turn[0]}
    for name in turn:
      workers[name].start(steps[name])
      row[name] = workers[name].rate()
    results.append(row)
  return steps, results


def spread(values: list[float]) -> dict[str, float]:
  return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(rounds: list[dict[str, float]]) -> dict:
  """Medians over rounds of each mode's episodes/s, and medians of the per-round ratios."""
  out = {m: spread([r[m] for r in rounds]) for m in rounds[0]}
  out["pinned_over_free"] = statistics.median(r["pinned processes"] / r["one free process"] for r in rounds)
  out["free_over_one_core"] = statistics.median(r["one free process"] / r["one core"] for r in rounds)
  return out


def measure(config_spec: str, episodes: int, rounds: int, seconds: float, max_cores: int = 0) -> dict:
  """`max_cores` > 0: only the first that many of this process's cores (one worker each)."""
  cores = sorted(os.sched_getaffinity(0))[:max_cores or None]
  if len(cores) < 2:
    raise SystemExit(f"benchmarks.cores compares processes on several cores; it has {len(cores)} "
                     f"(check --cores, taskset or the container's CPU limit).")
  workers = [Worker({c}, config_spec, episodes) for c in cores] + [Worker(set(cores), config_spec, episodes)]
  try:
    worker_cores = [w.wait_ready() for w in workers]
    *pinned, free = workers
    # Steps per timed block: about `seconds` on one core, measured once.
    steps = pinned[0].steps_per_block(seconds, episodes)
    results = []
    for _ in range(rounds):
      pinned[0].start(steps)
      one_core = pinned[0].rate()
      for w in pinned:
        w.start(steps)
      together = sum(w.rate() for w in pinned)
      free.start(steps * len(pinned))
      results.append({"one core": one_core, "pinned processes": together, "one free process": free.rate()})
  finally:
    for w in workers:
      w.close()
  return {"config": config_spec, "episodes_per_step": episodes, "cores": len(cores), "steps_per_block": steps,
          "worker_cores": worker_cores,
          "rounds": results, **summarise(results)}


def table(result: dict) -> str:
  k = result["cores"]
  names = {"one core": "one process pinned to one core",
           "pinned processes": f"{k} pinned processes at once (summed)",
           "one free process": f"one process on all {k} cores"}
  lines = [f"| {result['config']}, {result['episodes_per_step']} episodes/step | episodes/s median (min-max) |",
           "|---|---|"]
  for mode, name in names.items():
    r = result[mode]
    lines.append(f"| {name} | {r['median']:.1f} ({r['min']:.1f}-{r['max']:.1f}) |")
  lines.append(f"\nOne process on {k} cores: {result['free_over_one_core']:.2f}x one core; {k} pinned processes: "
               f"{result['pinned_over_free']:.2f}x the one process (medians of per-round ratios, "
               f"{len(result['rounds'])} rounds).")
  return "\n".join(lines)


def rounds_parser(doc: str, seconds_help: str) -> argparse.ArgumentParser:
  """The options of a benchmark that times worker processes in rounds (this one, head_to_head)."""
  parser = argparse.ArgumentParser(description=common.cli_description(doc))
  parser.add_argument("--config", default="omniglot_1shot_v1", help="a configs/ name, optionally name:arg")
  parser.add_argument("--episodes", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--seconds", type=float, default=2.0, help=seconds_help)
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  return parser


def main():
  parser = rounds_parser(__doc__, "length of one timed block on one core")
  parser.add_argument("--cores", type=int, default=0, help="use the first K cores only (default: all)")
  args = parser.parse_args()
  if args.worker:
    return worker(args.config, args.episodes)
  result = measure(args.config, args.episodes, args.rounds, args.seconds, args.cores)
  common.report("cores", result, table(result))


if __name__ == "__main__":
  main()
