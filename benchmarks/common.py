"""Shared by the benchmarks: configs by name, episode batches, repeat timing, memory, matmul peak.

Every benchmark process measures one framework only (torch and JAX in one process fight over the
cores), excludes compilation and warm-up from its rates and reports them separately, and gives the
median and spread over at least 5 timed repeats. Figures on shared machines are noisy: compare
ratios from one run.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import platform
import resource
import time
from typing import Callable

import numpy as np

from ht_jax import allocator

RESULTS = pathlib.Path(__file__).parent / "results"
REPO = pathlib.Path(__file__).resolve().parents[1]
# Inside a checkout with the project's shared data beside it, use that copy (as the scripts do).
if "HT_DATA_DIR" not in os.environ and (REPO.parent / "shared" / "data" / "omniglot_background.npz").exists():
  os.environ["HT_DATA_DIR"] = str(REPO.parent / "shared" / "data")
CONFIGS = ("omniglot_1shot_v1", "omniglot_5shot_v1", "miniimagenet_1shot_v1")
ROW_KEYS = ("benchmark", "config", "framework", "episodes_per_step", "episodes_per_s_median",
            "episodes_per_s_min", "episodes_per_s_max", "peak_rss_mb", "flop_fraction_of_matmul_peak")


def cli_description(doc: str) -> str:
  """A module docstring's opening words for --help: up to its first `command`, without the colon."""
  return " ".join(doc.split("`")[0].split()).rstrip(":")


def load_config(spec: str):
  """configs/<name>.py's full config (the benchmarks measure the real model); "name:arg" passes
  arg to its get_config (quickstart:tiny, for tests)."""
  name, _, arg = spec.partition(":")
  return importlib.import_module(f"configs.{name}").get_config(arg or None)


def uses_omniglot(config) -> bool:
  return config.data.train_dataset.startswith("omniglot")


def training_batches(config, episodes_per_step: int, count: int = 4) -> list[dict[str, np.ndarray]]:
  """`count` training batches [B, ...]: real Omniglot episodes, or random images of the config's
  shape for datasets this machine does not hold (speed does not depend on pixel values)."""
  d = config.data
  if uses_omniglot(config):
    import ht_data
    from ht_jax.input_pipeline import episode_arrays
    sampler = ht_data.EpisodeSampler(ht_data.load_dataset(d), ht_data.train_class_ids(d),
                                     ht_data.EpisodeSpec.from_config(d, training=True))
    return [episode_arrays(sampler.batch(0, step, range(episodes_per_step))) for step in range(count)]
  rng = np.random.default_rng(0)
  n, s, q, size = int(d.num_labels), int(d.samples_transformer), int(d.samples_cnn), int(d.image_size)
  def batch():
    return {"support_images": rng.uniform(-1, 1, (episodes_per_step, s, size, size, 3)).astype(np.float32),
            "support_labels": np.tile(np.arange(s, dtype=np.int32) % n, (episodes_per_step, 1)),
            "query_images": rng.uniform(-1, 1, (episodes_per_step, q, size, size, 3)).astype(np.float32),
            "query_labels": np.tile(np.arange(q, dtype=np.int32) % n, (episodes_per_step, 1))}
  return [batch() for _ in range(min(count, 2))]


# Set by benchmarks.run for a process that compiles alongside another: "<ready file>:<go file>".
TURN_ENV = "HT_BENCH_TURN"


def wait_for_turn() -> None:
  """Between compiling and timing. Under benchmarks.run two JAX measurements compile at once (one
  XLA compile keeps only 1.1-1.5 of the 2 cores busy), but each must be timed alone: the process
  says it has compiled (touches the ready file) and sleeps until the run lets it go on. Elsewhere
  (no HT_BENCH_TURN) it returns at once."""
  spec = os.environ.get(TURN_ENV)
  if not spec:
    return
  ready, go = spec.split(os.pathsep)
  pathlib.Path(ready).touch()
  while not os.path.exists(go):
    time.sleep(0.02)


class JaxTraining:
  """The JAX training step of `config` at `episodes_per_step`, compiled, over `batch_count`
  pre-sampled batches (training_batches). run_steps(k) runs k more steps, cycling the batches, and
  returns when they are done; compile_s is the compile plus the first step."""

  def __init__(self, config, episodes_per_step: int, batch_count: int = 4):
    import jax
    from ht_jax.optimizer import make_optimizer
    from ht_jax.train import create_model, make_train_step
    config.train.episodes_per_step = episodes_per_step
    self.batches = [jax.device_put(b) for b in training_batches(config, episodes_per_step, batch_count)]
    graphdef, params = create_model(config)
    tx = make_optimizer(config.train)
    opt_state = tx.init(params)
    self.key = jax.random.key(0)
    started = time.perf_counter()
    self.step = make_train_step(graphdef, config, tx).lower(params, opt_state, self.batches[0], self.key).compile()
    self.params, self.opt_state, metrics = self.step(params, opt_state, self.batches[0], self.key)
    jax.block_until_ready(metrics)
    self.compile_s = time.perf_counter() - started
    wait_for_turn()
    self.steps_run = 0

  def run_steps(self, k: int) -> None:
    import jax
    metrics = None
    for _ in range(k):
      batch = self.batches[self.steps_run % len(self.batches)]
      self.params, self.opt_state, metrics = self.step(self.params, self.opt_state, batch, self.key)
      self.steps_run += 1
    jax.block_until_ready(metrics)


WARMUP_SECONDS = 1.0
WARMUP_MAX_SECONDS = 5.0
WARMUP_GROWTH_MB = 8.0    # a block that raises the peak RSS by more is still faulting memory in


def warm_up(run_steps: Callable[[int], None], seconds: float = WARMUP_SECONDS,
            memory_mb: Callable[[], float] | None = None) -> float:
  """Untimed steps: one, then blocks of 2, 4, 8... steps (none longer than about `seconds`) until
  `seconds` have passed and the last block left the peak RSS (`memory_mb`, default peak_rss_mb)
  where it was, or WARMUP_MAX_SECONDS; returns the first step's seconds. A first step of `seconds`
  or more is the whole warm-up, as its repeats run one step at a time or few.
  The first steps after compiling still fault in the allocator's fresh memory: without them the
  first timed repeat of miniImageNet ran at half speed and Omniglot's at 0.6x. Blocks, because
  the timed repeats run steps in blocks, and there JAX holds more than one step's temporaries at
  once (Omniglot 1-shot at 16 per step: 214 MB each, each faulted in at about 0.5 s of kernel
  time), which steps run one at a time rarely reach: warmed up one step at a time, JAX's first
  timed repeat read 0.73x the others (median of 12 full runs' rows at 16 per step)."""
  memory_mb = memory_mb or peak_rss_mb
  started = time.perf_counter()
  run_steps(1)
  first = time.perf_counter() - started
  steps, grew = 2, False
  while (time.perf_counter() - started < seconds or grew) and time.perf_counter() - started < WARMUP_MAX_SECONDS:
    before, block_started = memory_mb(), time.perf_counter()
    run_steps(steps)
    step_s = (time.perf_counter() - block_started) / steps
    grew = memory_mb() - before > WARMUP_GROWTH_MB
    steps = max(2, min(2 * steps, round(seconds / max(step_s, 1e-6))))
  return first


def timed_repeats(run_steps: Callable[[int], None], episodes_per_step: int, repeats: int,
                  seconds_per_repeat: float, prior: dict | None = None,
                  warmup_seconds: float = WARMUP_SECONDS) -> dict:
  """Warms up (warm_up, unless warmup_seconds is 0), calls run_steps(k) (k steps, returning when
  they are done) once to estimate a step's time, then times `repeats` blocks of k >= 1 steps
  lasting about `seconds_per_repeat` each. A step longer than a repeat makes the estimate itself
  the first repeat (slow rows cost one step less). `prior`, an earlier result for the same
  run_steps (so already warm), keeps its blocks as the first repeats.
  Also reports the process's CPU time over wall time (2.0 on two busy cores) and each repeat's
  page faults, minor (fresh memory) and major (pages read back from disk, such as code the kernel
  dropped under memory pressure): what a slow repeat spent outside the step."""
  def timed(k):
    wall, cpu, usage = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
    run_steps(k)
    wall, after = time.perf_counter() - wall, resource.getrusage(resource.RUSAGE_SELF)
    return (k * episodes_per_step / wall, (time.process_time() - cpu) / wall,
            after.ru_minflt - usage.ru_minflt, after.ru_majflt - usage.ru_majflt)

  if prior:
    steps = prior["steps_per_repeat"]
    samples = list(zip(prior["repeat_rates"], prior["repeat_cpu_utilisation"],
                       prior["repeat_minor_page_faults"], prior["repeat_major_page_faults"]))
  else:
    if warmup_seconds > 0:
      warm_up(run_steps, warmup_seconds)
    first = timed(1)
    steps = max(1, round(seconds_per_repeat / max(episodes_per_step / first[0], 1e-6)))
    samples = [first] if steps == 1 else []
  samples += [timed(steps) for _ in range(repeats - len(samples))]
  rates, utilisation, minor, major = (list(column) for column in zip(*samples))
  return {"episodes_per_s_median": float(np.median(rates)), "episodes_per_s_min": float(np.min(rates)),
          "episodes_per_s_max": float(np.max(rates)), "repeats": len(samples), "steps_per_repeat": steps,
          "cpu_utilisation": float(np.median(utilisation)), "repeat_rates": rates,
          "repeat_cpu_utilisation": utilisation, "repeat_minor_page_faults": minor,
          "repeat_major_page_faults": major, "allocator": allocator.active()}


def peak_rss_mb() -> float:
  """This process's peak resident memory (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak_flops(size: int = 2048, repeats: int = 10) -> float:
  """FLOP/s of a large float32 jnp.matmul on this process's default device, the fastest of
  `repeats`: what a dense kernel reaches here, the yardstick for the model's fraction. The fastest,
  not the median: in one run the median of 5 read 85 GFLOP/s in one process and 153-186 in all
  the others, which put that row's fraction at 64.7% (a yardstick is what the machine can do)."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  times = []
  for _ in range(repeats):
    started = time.perf_counter()
    matmul(a).block_until_ready()
    times.append(time.perf_counter() - started)
  return 2 * size ** 3 / min(times)


def compiled_flops(compiled) -> float | None:
  """XLA's FLOP count of a compiled function (None where the backend does not report it)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list):
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get("flops")
  return float(flops) if flops else None


def flop_fraction(flops_per_call: float | None, calls_per_s: float, peak_flops: float) -> float | None:
  """The compiled call's FLOP rate as a fraction of the matmul peak (None without a FLOP count)."""
  return flops_per_call * calls_per_s / peak_flops if flops_per_call else None


def write_json(name: str, rows: list[dict], extra: dict | None = None) -> pathlib.Path:
  return save_result(name, {**(extra or {}), "rows": rows})


CPUINFO_FIELDS = {"model name": "cpu", "cpu family": "cpu_family", "model": "cpu_model", "cache size": "cache_per_core"}


def parse_cpuinfo(text: str) -> dict[str, str]:
  """The first processor's model name, family, model number and cache size from /proc/cpuinfo's
  text (those present). The numbers matter: a cloud VM may name only "AMD EPYC", while its family
  tells a Zen 3 or 4 (25) from a Zen 5 (26)."""
  found = {}
  for line in text.splitlines():
    if not line.strip():
      if found:
        break                        # the end of the first processor's block
      continue
    key, _, value = line.partition(":")
    if key.strip() in CPUINFO_FIELDS:
      found.setdefault(CPUINFO_FIELDS[key.strip()], value.strip())
  return found


def host() -> dict:
  """The machine a benchmark ran on, saved with its results: rates moved 1.6x from one 2-core VM
  to the next on the same code (README, Speed), so a result means little without it."""
  try:
    cpu = parse_cpuinfo(pathlib.Path("/proc/cpuinfo").read_text())
  except OSError:                    # not Linux
    cpu = {}
  cpu.setdefault("cpu", platform.processor() or "unknown")
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return {**cpu, "machine": platform.machine(), "cores": cores}


def host_line(machine: dict) -> str:
  """host() in words: 'AMD EPYC (x86_64, CPU family 26, model 2, 1024 KB cache per core), 2 cores'."""
  details = [machine.get("machine", "")]
  details += [f"CPU family {machine['cpu_family']}"] if "cpu_family" in machine else []
  details += [f"model {machine['cpu_model']}"] if "cpu_model" in machine else []
  details += [f"{machine['cache_per_core']} cache per core"] if "cache_per_core" in machine else []
  details = ", ".join(d for d in details if d)
  return f"{machine['cpu']}{f' ({details})' if details else ''}, {machine['cores']} cores"


def save_result(name: str, result: dict) -> pathlib.Path:
  """`result`, with the host it ran on (host(), unless it already names one), as
  benchmarks/results/<name>.json."""
  RESULTS.mkdir(exist_ok=True)
  path = RESULTS / f"{name}.json"
  path.write_text(json.dumps(result if "host" in result else {**result, "host": host()}, indent=2))
  return path


def report(name: str, result: dict, table: str) -> None:
  """A rounds benchmark's ending: `result` saved (save_result), its table printed."""
  result = {**result, "host": host()}
  save_result(name, result)
  print(table)
  print(f"host: {host_line(result['host'])}")


def markdown_table(rows: list[dict]) -> str:
  """One line per row: the fixed keys, then compile/warm-up seconds where measured."""
  lines = ["| benchmark | config | framework | episodes/step | episodes/s median (min-max) | compile+warm-up s "
           "| peak RSS MB | fraction of matmul peak | CPU time / wall time |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if r.get("error"):
      lines.append(f"| {r['benchmark']} | {r['config']} | {r['framework']} | {r['episodes_per_step']} | "
                   f"failed: {r['error']} | | | | |")
      continue
    fraction, busy = r.get("flop_fraction_of_matmul_peak"), r.get("cpu_utilisation")
    lines.append(
        f"| {r['benchmark']} | {r['config']} | {r['framework']} | {r['episodes_per_step']} | "
        f"{r['episodes_per_s_median']:.1f} ({r['episodes_per_s_min']:.1f}-{r['episodes_per_s_max']:.1f}) | "
        f"{r.get('compile_s', float('nan')):.1f} | {r['peak_rss_mb']:.0f} | "
        f"{'' if fraction is None else f'{100 * fraction:.1f}%'} | "
        f"{'' if busy is None else f'{busy:.2f}'} |")
  return "\n".join(lines)
