"""Every benchmark, each measurement in its own process: `python -m benchmarks.run [--quick]`.

Training throughput of ht_jax and ht_torch at 1, 4, 16 and 64 episodes per step on
omniglot_1shot_v1, omniglot_5shot_v1 and miniimagenet_1shot_v1; evaluation throughput of both under
the original protocol; the input pipeline's waiting fraction for Omniglot and 84x84 RGB episodes.
Writes benchmarks/results/latest.json (one row per measurement; keys in benchmarks.common.ROW_KEYS
plus details) and prints the tables. About 15 minutes on a 2-core CPU (more with --full, which adds
miniImageNet at 64 episodes per step); the same command runs on a GPU machine (JAX then uses the
GPU; torch stays on the CPU, as ht_torch does). JAX measurements compile two at a time, in groups
(compile_groups), then each is timed alone (run_compiling_together); each group is followed by its
torch twins; the input pipeline's measurements then compile together in the same way. Last, the issue's
2x-torch comparison (omniglot_1shot_v1 at 16 episodes per step) once more from
benchmarks.head_to_head: both frameworks warm, timed in alternating blocks, so the ratio does not
carry the machine's drift between two rows' processes.
A measurement that fails (out of memory, for instance) becomes a row with its error.
"""

from __future__ import annotations

if __name__ == "__main__":   # first, before jax or torch loads: the command restarts with mimalloc
  from ht_jax.allocator import restart_with_mimalloc   # (ht_jax/allocator.py; HT_ALLOCATOR=system: off)
  restart_with_mimalloc()

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from benchmarks import common, train

PLAN_KEYS = ("kind", "framework", "config", "episodes")
HEAD_TO_HEAD = {"config_spec": "omniglot_1shot_v1", "episodes": 16, "rounds": 10, "seconds": 1.0}


def plan(quick: bool, full: bool = False) -> list[dict]:
  episodes = (1, 16) if quick else (1, 4, 16, 64)
  configs = common.CONFIGS[:1] if quick else common.CONFIGS
  items = []
  for config in configs:
    # 84x84 episodes at 64 per step need about 29 GB in JAX (out of memory on a 23 GB machine)
    # and take torch minutes: only with --full.
    for b in [b for b in episodes if full or not (b == 64 and config.startswith("miniimagenet"))]:
      for framework in ("jax", "torch"):
        items.append({"kind": "train", "framework": framework, "config": config, "episodes": b})
    # Evaluation "episodes" are JAX's tasks per call, 0 for the config's eval.tasks_per_call. 84x84
    # tasks one per call, as torch takes them: the config's 8 per call ran slower here (2.5 tasks/s
    # against 2.9-3.1, separate processes) and makes each call several seconds long.
    tasks = 1 if config.startswith("miniimagenet") else 0
    for framework in ("jax", "torch"):
      items.append({"kind": "evaluation", "framework": framework, "config": config, "episodes": tasks})
  items.append({"kind": "input_pipeline", "framework": "jax", "config": "omniglot_1shot_v1", "episodes": 16})
  if not quick:
    for where in ("step", "host"):   # the ImageNet-style augmentation in the jitted step, or in the sampler
      items.append({"kind": "input_pipeline", "framework": "jax", "config": "miniimagenet_1shot_v1", "episodes": 1,
                    "augmentation": where})
  return items


def measure_one(item: dict, repeats: int, seconds: float) -> dict:
  """Runs in the child process."""
  if item["kind"] == "train":
    if item["framework"] == "torch":
      return train.measure_torch(item["config"], item["episodes"], repeats, seconds, item.get("skip_modes"))
    return train.measure_jax(item["config"], item["episodes"], repeats, seconds)
  if item["kind"] == "evaluation":
    from benchmarks import evaluation
    return evaluation.MEASURE[item["framework"]](item["config"], repeats, seconds, item["episodes"] or None)
  from benchmarks import input_pipeline
  return input_pipeline.measure(item["config"], item["episodes"], steps=16 if item["episodes"] >= 16 else 20,
                                augmentation=item.get("augmentation", "step"))


class Measurement:
  """One item measured in a child process (`--one`), started at construction."""

  def __init__(self, item: dict, repeats: int, seconds: float, timeout: float, env: dict | None = None):
    self.item, self.timeout, self.started = item, timeout, time.perf_counter()
    self.process_started = self.started
    self._out = tempfile.NamedTemporaryFile(suffix=".json")
    # A file, not a pipe: nobody reads a pipe while the child compiles, and a full one would stall it.
    self._stderr = tempfile.TemporaryFile(mode="w+")
    command = [sys.executable, "-m", "benchmarks.run", "--one", json.dumps(item), "--out", self._out.name,
               "--repeats", str(repeats), "--seconds", str(seconds)]
    self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self._stderr, env=env or os.environ)

  def compiled(self, ready_file: str) -> bool:
    """Done compiling: it says so (the ready file), has ended, or its time is up."""
    return os.path.exists(ready_file) or self._process.poll() is not None or self._timed_out()

  def _timed_out(self) -> bool:
    return time.perf_counter() - self.started > self.timeout

  def row(self) -> dict:
    """Waits for the process; its row, or a failed one naming why."""
    try:
      self._process.wait(timeout=max(1.0, self.timeout - (time.perf_counter() - self.started)))
    except subprocess.TimeoutExpired:
      self._process.kill()
      self._process.wait()
      return failed(self.item, f"took over {self.timeout:.0f} s")
    finally:
      out = open(self._out.name).read()
      self._out.close()
      self._stderr.seek(0)
      stderr = self._stderr.read()
      self._stderr.close()
    if self._process.returncode != 0:
      lines = [l for l in (stderr or "").strip().splitlines() if l.strip()]
      reason = ("killed (out of memory?)" if self._process.returncode < 0
                else (lines[-1][:160] if lines else "exit %d" % self._process.returncode))
      return failed(self.item, reason)
    return json.loads(out)


def run_in_subprocess(item: dict, repeats: int, seconds: float, timeout: float, env: dict | None = None) -> dict:
  return Measurement(item, repeats, seconds, timeout, env).row()


# The shadow group's processes (below) held 15-17 GB at most together; with less memory free, pairs.
SHADOW_MEMORY_GB = 20.0


def available_memory_gb() -> float:
  """MemAvailable from /proc/meminfo (Linux), else the physical memory."""
  try:
    for line in open("/proc/meminfo"):
      if line.startswith("MemAvailable:"):
        return int(line.split()[1]) / 2**20
  except OSError:
    pass
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def compile_groups(items: list[dict], memory_gb: float | None = None) -> list[list[dict]]:
  """The plan's JAX training and evaluation items in groups that compile together, at most
  COMPILE_SLOTS at once (run_compiling_together), longest compiles first (84x84 images first, then
  training before evaluation, more episodes per step first). Mostly pairs: a pair's compiling takes
  as long as its longer one. miniImageNet at 16 episodes per step compiles sixteen single-episode
  groups (parallel.auto_groups), 2.5-4 minutes, several times any other: the rest of the
  miniImageNet programs, Omniglot's at 4 per step and its evaluations compile one after another
  beside it, in its shadow, instead of in pairs of their own (their processes then wait, holding 3 GB
  at most each),
  where `memory_gb` (default: what is available now) is at least SHADOW_MEMORY_GB; when its other
  slot is done before it, the last pair's (the shortest compiles) fill it (main, `fillers`). miniImageNet
  at 64 (--full) then compiles alone."""
  def images_84(item):
    return item["config"].startswith("miniimagenet")

  def pairs(jobs):
    return [jobs[n:n + 2] for n in range(0, len(jobs), 2)]

  jobs = [i for i in items if i["framework"] == "jax" and i["kind"] in ("train", "evaluation")]
  jobs.sort(key=lambda i: (images_84(i), i["kind"] == "train", i["episodes"]), reverse=True)
  leads = [i for i in jobs if images_84(i) and i["kind"] == "train" and i["episodes"] >= 16]
  if not leads or (available_memory_gb() if memory_gb is None else memory_gb) < SHADOW_MEMORY_GB:
    return pairs(jobs)
  followers = [i for i in jobs if i not in leads]
  shadow = [i for i in followers if images_84(i) or i["kind"] == "evaluation" or i["episodes"] == 4]
  rest = [i for i in followers if i not in shadow]
  return [[lead] for lead in leads[:-1]] + [[leads[-1]] + shadow] + pairs(rest)


COMPILE_SLOTS = 2   # one XLA:CPU compile keeps 1.1-1.5 of the 2 cores busy


# A filler (below) starts only with this much memory available: an Omniglot program waiting for
# its turn holds 1-2.5 GB.
FILLER_MEMORY_GB = 4.0


def run_compiling_together(items: list[dict], repeats: int, seconds: float, timeout: float,
                           env: dict | None = None, slots: int = COMPILE_SLOTS,
                           fillers: list[dict] = ()) -> list[dict]:
  """One process per item, at most `slots` of them compiling at once (the next starts when one has
  compiled); each compiles its program, then waits (common.wait_for_turn) until every one has
  compiled; then they are timed one after another, in `items` order, each alone on the machine.
  Compiling two at a time saves about 1.4x of the compile time without touching what is timed.
  Once every item has started, a slot that frees while the first item is still compiling takes
  the next of `fillers` (with FILLER_MEMORY_GB available): the slot would otherwise stand idle
  until the first has compiled. The rows are those of `items`, then of the fillers that ran.
  Rows gain compiled_alongside, when their process started and when their timed turn began and
  ended (process_started, turn_started, turn_ended: the parent's time.perf_counter())."""
  # A waiting process holds only what it has used: on a GPU each would otherwise reserve 75% of its memory.
  env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", **(env or os.environ)}
  with tempfile.TemporaryDirectory(prefix="ht_bench_turns_") as turns:
    runs = []

    def start(n):
      ready, go = os.path.join(turns, f"ready{n}"), os.path.join(turns, f"go{n}")
      turn = {common.TURN_ENV: ready + os.pathsep + go}
      runs.append((Measurement(items[n], repeats, seconds, timeout, {**env, **turn}), ready, go))

    def compiling():
      return [m for m, ready, _ in runs if not m.compiled(ready)]

    for n in range(len(items)):
      while len(compiling()) >= slots:
        time.sleep(0.05)
      start(n)
    fillers = list(fillers)
    while compiling():
      lead, lead_ready, _ = runs[0]
      if (fillers and len(compiling()) < slots and not lead.compiled(lead_ready)
          and available_memory_gb() >= FILLER_MEMORY_GB):
        items = items + [fillers.pop(0)]
        start(len(items) - 1)
      time.sleep(0.05)
    rows = []
    for n, (measurement, _, go) in enumerate(runs):
      turn_started = time.perf_counter()
      measurement.started = turn_started   # its time waiting for the others' turns does not count
      pathlib.Path(go).touch()
      row = measurement.row()
      others = [item_key(i) for m, i in enumerate(items) if m != n]
      rows.append({**row, "compiled_alongside": others, "process_started": measurement.process_started,
                   "turn_started": turn_started, "turn_ended": time.perf_counter()})
  return rows


def head_to_head(env: dict | None = None, timeout: float | None = None, **settings) -> dict:
  """benchmarks.head_to_head's result for HEAD_TO_HEAD (updated by `settings`), or the settings
  and the error that stopped it (a worker that died or printed nonsense, `timeout` seconds
  passed): the run's other rows are kept either way."""
  from benchmarks import head_to_head as h2h
  settings = {**HEAD_TO_HEAD, **settings}
  try:
    return h2h.measure(**settings, env=env, timeout=timeout)
  except (RuntimeError, ValueError, OSError) as error:
    return {"config": settings["config_spec"], "episodes_per_step": settings["episodes"], "error": str(error)}


def item_key(item: dict) -> str:
  return " ".join(str(item[k]) for k in PLAN_KEYS) + (f" {item['augmentation']}" if "augmentation" in item else "")


def failed(item: dict, reason: str) -> dict:
  return {"benchmark": item["kind"], "config": item["config"], "framework": item["framework"],
          "episodes_per_step": item["episodes"], "episodes_per_s_median": None, "episodes_per_s_min": None,
          "episodes_per_s_max": None, "peak_rss_mb": None, "flop_fraction_of_matmul_peak": None, "error": reason}


def comparison_table(rows: list[dict]) -> str:
  """JAX against torch, training, side by side from this run; torch at its faster mode."""
  training = {(r["config"], r["framework"], r["episodes_per_step"]): r for r in rows if r["benchmark"] == "train"}
  lines = ["| config | episodes/step | ht_jax episodes/s | ht_torch episodes/s (mode; loop / vmap) | JAX / torch "
           "| ht_jax fraction of matmul peak | CPU time / wall, jax / torch | ht_jax / ht_torch peak RSS MB |",
           "|---|---|---|---|---|---|---|---|"]
  for (config, framework, b), j in training.items():
    if framework != "jax":
      continue
    t = training.get((config, "torch", b), {})

    def rate(r):
      return f"{r['episodes_per_s_median']:.1f} ({r['episodes_per_s_min']:.1f}-{r['episodes_per_s_max']:.1f})" \
          if r.get("episodes_per_s_median") else (r.get("error") or "not run")

    def both(r, key):
      return " / ".join(f"{r[key]:.2f}" if r.get(key) else "-" for r in (j, t))

    modes = " / ".join(f"{t[f'{m}_episodes_per_s']:.1f}" if t.get(f"{m}_episodes_per_s") else "not run"
                       for m in ("loop", "vmap") if t.get(f"{m}_episodes_per_s") or m in t.get("torch_modes_not_run", {}))
    torch_rate = f"{rate(t)}; {t['torch_mode']}; {modes}" if t.get("torch_mode") else rate(t)
    ratio = (f"{j['episodes_per_s_median'] / t['episodes_per_s_median']:.2f}x"
             if j.get("episodes_per_s_median") and t.get("episodes_per_s_median") else "")
    fraction = f"{100 * j['flop_fraction_of_matmul_peak']:.1f}%" if j.get("flop_fraction_of_matmul_peak") else ""
    memory = f"{j['peak_rss_mb']:.0f} / {t['peak_rss_mb']:.0f}" if j.get("peak_rss_mb") and t.get("peak_rss_mb") else ""
    lines.append(f"| {config} | {b} | {rate(j)} | {torch_rate} | {ratio} | {fraction} | "
                 f"{both(j, 'cpu_utilisation')} | {memory} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=common.cli_description(__doc__))
  parser.add_argument("--quick", action="store_true", help="omniglot_1shot_v1 at 1 and 16 episodes per step only")
  parser.add_argument("--full", action="store_true", help="also miniimagenet_1shot_v1 at 64 episodes per step")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--seconds", type=float, default=0.5, help="length of one timed repeat")
  parser.add_argument("--timeout", type=float, default=480.0, help="seconds before one measurement is abandoned")
  parser.add_argument("--compile-alone", action="store_true",
                      help="compile each JAX program in its own turn instead of two at once")
  parser.add_argument("--one", help=argparse.SUPPRESS)
  parser.add_argument("--out", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    row = measure_one(json.loads(args.one), args.repeats, args.seconds)
    open(args.out, "w").write(json.dumps(row))
    return

  started, rows = time.perf_counter(), []
  items = plan(args.quick, args.full)
  # One JAX compilation cache for this run only, small programs included: creating the model
  # compiles ~40 initialisers (10 s in every fresh process, 1.5 s from the cache), and the
  # input-pipeline rows run training steps that training rows compiled. Every training and
  # evaluation program is compiled once per run, so each row's compile_s stays a cold compile.
  with tempfile.TemporaryDirectory(prefix="ht_bench_jax_cache_") as cache:
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    by_key = {}

    def run(batch, fillers=()):
      """The rows' items: `batch`, then the fillers that ran (run_compiling_together)."""
      print(f"[{len(by_key) + 1}/{len(items)} {time.perf_counter() - started:5.0f} s] "
            + " | ".join(item_key(i) for i in batch) + (" (+ fillers)" if fillers else ""), flush=True)
      rows = (run_compiling_together(batch, args.repeats, args.seconds, args.timeout, env, fillers=fillers)
              if len(batch) > 1 else [run_in_subprocess(batch[0], args.repeats, args.seconds, args.timeout, env)])
      ran = batch + list(fillers)[:len(rows) - len(batch)]
      by_key.update({item_key(i): r for i, r in zip(ran, rows)})
      return ran

    groups = compile_groups(items)
    # The input pipeline's rows last, in a group of their own: their steps compile (or load the
    # training rows' programs from the run's cache) two at a time too, each timed alone.
    last = [i for i in items if i["kind"] == "input_pipeline"]
    if args.compile_alone:
      groups, last = [[item] for group in groups for item in group] + [[i] for i in last], []
    while groups or last:
      if not groups:
        groups, last = [last], []
      group, groups = groups[0], groups[1:]
      if len(group) > COMPILE_SLOTS and groups:
        # The shadow group (compile_groups): on a slow day its other slot stands idle for the last
        # 30-50 s of miniImageNet's long compile. The last pair (the shortest compiles, Omniglot at
        # 1 episode per step) fills it; a longer filler could outlast the lead (one at 16 per step
        # did, by 30 s). One of the pair left over compiles with the last group, not alone.
        group = run(group, fillers=groups[-1][::-1])
        left = [i for i in groups[-1] if i not in group]
        if len(left) < 2:   # the pair (or all but one of it) ran as fillers
          groups, last = groups[:-1], left + last
      else:
        run(group)
      # Each JAX row's torch twin right after its group, so that the two are measured in the same
      # hour; fewer episodes per step first, so that a torch mode far slower there is not run at
      # more (benchmarks.train.modes_to_skip).
      twins = [{**j, "framework": "torch"} for j in group]
      for twin in sorted([t for t in twins if t in items], key=lambda t: t["episodes"]):
        if twin["kind"] == "train":
          skip = train.modes_to_skip(list(by_key.values()), twin["config"], twin["episodes"])
          twin = {**twin, "skip_modes": skip} if skip else twin
        run([twin])
    print(f"[{time.perf_counter() - started:5.0f} s] head to head: {HEAD_TO_HEAD}", flush=True)
    # About a minute: its JAX worker builds the step again (about 20 s even from the run's cache:
    # tracing, then loading the executable).
    versus = head_to_head(env, args.timeout)
  rows = [by_key[item_key(i)] for i in items]
  out = {"wall_s": time.perf_counter() - started, "compiled_two_at_once": not args.compile_alone, "rows": rows,
         "head_to_head": versus, "host": common.host()}
  common.save_result("latest", out)
  print(common.markdown_table(rows))
  print()
  print(comparison_table(rows))
  print()
  from benchmarks.head_to_head import table
  print(f"head to head failed: {versus['error']}" if "error" in versus else table(versus))
  waits = [r for r in rows if r["benchmark"] == "input_pipeline" and "data_wait_fraction" in r]
  for r in waits:
    where = {"step": ", ImageNet-style augmentation in the jitted step",
             "host": ", ImageNet-style augmentation in the sampler"}.get(r["augmentation"], "")
    print(f"input pipeline, {r['config']} {r['image_shape']}, {r['episodes_per_step']} episodes/step{where}: "
          f"{100 * r['data_wait_fraction']:.1f}% of training time waiting for data "
          f"(sampler alone: {r['sampler_episodes_per_s_one_thread']:.0f} episodes/s on one thread)")
  print(f"host: {common.host_line(out['host'])}")
  print(f"wrote {common.RESULTS / 'latest.json'} in {out['wall_s']:.0f} s")
  if any(r.get("episodes_per_s_median") for r in rows if r["benchmark"] == "train"):
    from benchmarks.plot import plot
    plot(out, common.RESULTS / "throughput.png")
    print(f"drew {common.RESULTS / 'throughput.png'}")


if __name__ == "__main__":
  main()
