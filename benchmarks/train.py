"""Training throughput: episodes per second of one framework's training step.

  python -m benchmarks.train --framework jax|torch [--config omniglot_1shot_v1] [--episodes 1 4 16 64]

The step alone (episodes are sampled beforehand; benchmarks.input_pipeline measures the data
side), with compilation (JAX) or the first step (torch) excluded and reported as compile_s.
JAX rows add XLA's FLOP count of the step and its FLOP rate as a fraction of a large matmul's,
measured in the same process. ht_torch is timed both ways the issue allows, looping over a step's
episodes (ht_torch.train.train_step) and batching them (batched_train_step, torch.func.vmap: the
generated kernels become grouped convolutions): one timed block of each picks the faster
(torch_mode), which is then timed over all the repeats; the row reports both rates
(<mode>_episodes_per_s: the faster mode's median, the other's one block, or its one warm step
where that took over SLOWER_RATIO times the faster's: torch_slower_mode_timed_by). Modes are
judged from warm steps, never the first: torch.func.vmap's first step carries 10-35 s of one-time
costs on 5-shot and 84x84 episodes (38 s against a warm 4-6 s for miniImageNet at 16 per step, 20
s against 3-5 s for Omniglot 5-shot at 64, where warm it is as fast as the loop). `benchmarks.run`
leaves out a mode that ran over SLOWER_RATIO times slower at fewer episodes per step of the same
config (modes_to_skip; the row's torch_modes_not_run says why): vmap on 84x84 episodes, about 2x
slower than the loop at 4 and at 16 per step, whose first step alone took 38 s of the run.
Writes benchmarks/results/train_<framework>.json and prints a markdown table.
"""

from __future__ import annotations

if __name__ == "__main__":   # first, before jax or torch loads: the command restarts with mimalloc
  from ht_jax.allocator import restart_with_mimalloc   # (ht_jax/allocator.py; HT_ALLOCATOR=system: off)
  restart_with_mimalloc()

import argparse
import time

import numpy as np

from benchmarks import common


def measure_jax(config_name: str, episodes_per_step: int, repeats: int = 5, seconds_per_repeat: float = 1.0) -> dict:
  import jax
  from ht_jax.train import episode_groups
  config = common.load_config(config_name)
  training = common.JaxTraining(config, episodes_per_step)
  timing = common.timed_repeats(training.run_steps, episodes_per_step, repeats, seconds_per_repeat)
  flops = common.compiled_flops(training.step)
  peak = common.matmul_peak_flops()
  fraction = common.flop_fraction(flops, timing["episodes_per_s_median"] / episodes_per_step, peak)
  return {"benchmark": "train", "config": config_name, "framework": "jax", "episodes_per_step": episodes_per_step,
          **timing, "compile_s": training.compile_s, "peak_rss_mb": common.peak_rss_mb(),
          "flop_fraction_of_matmul_peak": fraction, "step_gflop": None if flops is None else flops / 1e9,
          "matmul_peak_gflops": peak / 1e9, "episode_groups": episode_groups(config), "device": str(jax.devices()[0].device_kind)}


SLOWER_RATIO = 1.5


def clearly_slower(warm_step_s: dict[str, float]) -> set[str]:
  """The torch modes not worth timing: a warm step over SLOWER_RATIO times the fastest mode's and
  over 2 s. The others get one timed block each, which picks the faster; only that one gets the
  remaining repeats (the slower mode's repeats cost minutes on 84x84 episodes and change no row)."""
  fastest = min(warm_step_s.values())
  return {m for m, t in warm_step_s.items() if t > max(SLOWER_RATIO * fastest, 2.0)}


def first_and_warm_step_s(run_steps) -> tuple[float, float]:
  """Runs the first step, then warms up (common.warm_up): the first step's seconds and the next's."""
  started = time.perf_counter()
  run_steps(1)
  return time.perf_counter() - started, common.warm_up(run_steps)


def torch_training(config_name: str, episodes_per_step: int,
                   skip: tuple[str, ...] = ()) -> tuple[dict, dict[str, float], dict[str, float]]:
  """ht_torch's training step both ways the issue allows (less `skip`), each run once and then
  warmed up (common.warm_up): {mode: run_steps} (run_steps(k) runs k steps, cycling pre-sampled
  batches), {mode: first step's seconds} and {mode: the next step's seconds, a warm one}."""
  import torch
  from ht_torch.model.hypertransformer import HyperTransformer
  from ht_torch.optimizer import make_optimizer
  from ht_torch.train import batched_train_step, train_step
  config = common.load_config(config_name)
  batches = common.training_batches(config, episodes_per_step)
  torch.manual_seed(0)
  model = HyperTransformer(config)
  optimizer, scheduler = make_optimizer(model.parameters(), config.train)
  modes = {"loop": train_step} if episodes_per_step == 1 else {"loop": train_step, "vmap": batched_train_step}
  modes = {m: step for m, step in modes.items() if m not in skip}
  first_step_s, warm_step_s, runners = {}, {}, {}
  for mode, step in modes.items():
    state = {"i": 0}

    def run_steps(k, step=step, state=state):
      for _ in range(k):
        step(model, optimizer, scheduler, config.model, batches[state["i"] % len(batches)])
        state["i"] += 1

    first_step_s[mode], warm_step_s[mode] = first_and_warm_step_s(run_steps)
    runners[mode] = run_steps
  return runners, first_step_s, warm_step_s


def probe_torch_modes(runners: dict, warm_step_s: dict[str, float], episodes_per_step: int,
                      seconds: float) -> tuple[str, dict[str, dict], set[str]]:
  """One timed block of each warm mode worth timing (clearly_slower): the faster mode, the blocks'
  timings by mode, and the modes left untimed."""
  untimed = clearly_slower(warm_step_s)
  probes = {m: common.timed_repeats(run, episodes_per_step, 1, seconds, warmup_seconds=0)
            for m, run in runners.items() if m not in untimed}
  return max(probes, key=lambda m: probes[m]["episodes_per_s_median"]), probes, untimed


def modes_to_skip(earlier_rows: list[dict], config_name: str, episodes_per_step: int) -> dict[str, str]:
  """{mode: why} for the torch modes not worth running at `episodes_per_step`: those that ran over
  SLOWER_RATIO times slower than the faster mode (or were left out) in the nearest earlier torch
  training row of the same config with fewer episodes per step."""
  smaller = [r for r in earlier_rows if r.get("benchmark") == "train" and r.get("framework") == "torch"
             and r.get("config") == config_name and r.get("torch_mode")
             and r["episodes_per_step"] < episodes_per_step]
  if not smaller:
    return {}
  nearest = max(smaller, key=lambda r: r["episodes_per_step"])
  skip = dict(nearest.get("torch_modes_not_run", {}))
  best, b = nearest["torch_mode"], nearest["episodes_per_step"]
  for mode in ("loop", "vmap"):
    rate = nearest.get(f"{mode}_episodes_per_s")
    if mode != best and rate and rate * SLOWER_RATIO < nearest["episodes_per_s_median"]:
      skip[mode] = (f"{rate:.1f} against {best}'s {nearest['episodes_per_s_median']:.1f} episodes/s "
                    f"at {b} per step")
  return skip


def measure_torch(config_name: str, episodes_per_step: int, repeats: int = 5, seconds_per_repeat: float = 1.0,
                  skip_modes: dict[str, str] | None = None) -> dict:
  import torch
  skip_modes = dict(skip_modes or {})
  runners, first_step_s, warm_step_s = torch_training(config_name, episodes_per_step, tuple(skip_modes))
  modes = list(runners)
  best, probes, untimed = probe_torch_modes(runners, warm_step_s, episodes_per_step, seconds_per_repeat)
  timing = common.timed_repeats(runners[best], episodes_per_step, repeats, seconds_per_repeat, prior=probes[best])
  rates = {m: episodes_per_step / warm_step_s[m] if m in untimed else probes[m]["episodes_per_s_median"] for m in modes}
  rates[best] = timing["episodes_per_s_median"]
  return {"benchmark": "train", "config": config_name, "framework": "torch", "episodes_per_step": episodes_per_step,
          **timing, "torch_mode": best, "compile_s": first_step_s[best], "peak_rss_mb": common.peak_rss_mb(),
          "flop_fraction_of_matmul_peak": None, "threads": torch.get_num_threads(),
          **{f"{m}_episodes_per_s": rate for m, rate in rates.items()},
          "torch_slower_mode_timed_by": "not run" if skip_modes else "one warm step" if untimed else "one timed block",
          "first_step_s": first_step_s,
          **({"torch_modes_not_run": skip_modes} if skip_modes else {})}


MEASURE = {"jax": measure_jax, "torch": measure_torch}


def main():
  parser = argparse.ArgumentParser(description=common.cli_description(__doc__))
  parser.add_argument("--framework", choices=sorted(MEASURE), required=True)
  parser.add_argument("--config", default="omniglot_1shot_v1", choices=common.CONFIGS)
  parser.add_argument("--episodes", type=int, nargs="+", default=[1, 4, 16, 64])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--seconds", type=float, default=1.0, help="length of one timed repeat")
  args = parser.parse_args()
  rows = [MEASURE[args.framework](args.config, b, args.repeats, args.seconds) for b in args.episodes]
  common.write_json(f"train_{args.framework}", rows)
  print(common.markdown_table(rows))


if __name__ == "__main__":
  main()
