"""Google's original TensorFlow HyperTransformer timed on this machine, in turns with ht_jax: the
baseline of the speed issue's 4x target, measured where our own rates are.

  python -m benchmarks.original_tf --original DIR --python TF_PYTHON [--rounds 3]
      [--steps 300,2300] [--jax-episodes 64] [--seconds 10]

The original is not a dependency of this project. DIR is a checkout of
google-research/google-research holding its hypertransformer/ folder, TF_PYTHON a Python that runs
it (README, Speed, names the versions measured). Nothing in the original is changed:
- its Omniglot cache (`--data_numpy_dir`: omniglot.npy, [1623 characters, 20 drawings, 28, 28, 1]
  uint8 on a white background) is written from this project's .npz data;
- its own scripts/omniglot_1shot_v1.sh runs, with that cache, a fresh log folder, a step count,
  and no checkpoints but its first and last;
- its rate is read from two run lengths: the extra steps of the long run over its extra wall time,
  so start-up, graph building, the checkpoints and the data loading cancel out. Its summaries and
  test-task evaluation every 100 steps stay in, as they are in its training.
Each round then times a block of ht_jax's step at --jax-episodes per step, in a worker kept warm
as benchmarks.scaling's are (0: the original alone), so the ratio is read round by round against
the machine's drift. Writes benchmarks/results/original_tf.json.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import types

import numpy as np

from benchmarks import common
from benchmarks.cores import Worker, spread
from ht_data.omniglot import read_omniglot
from ht_data.paths import resolve_data_dir

SCRIPT = pathlib.Path("hypertransformer/tf/scripts/omniglot_1shot_v1.sh")
NO_SAVES = 10**9      # --steps_between_saves: only the step-0 and final checkpoints
# Runs a command and writes its peak RSS in KB (its process tree's, as wait4 reports it) to the
# file named first. A small process of its own: a child forked from a large one (this benchmark's,
# or a test's) keeps the parent's memory in its own peak, which Linux carries over its exec.
PEAK_RSS_LAUNCHER = """
import os, subprocess, sys
process = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(process.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""
FETCH_HINT = ("clone it with `git clone --depth 1 --filter=blob:none --sparse "
              "https://github.com/google-research/google-research && git -C google-research "
              "sparse-checkout set hypertransformer` and pass that folder")


def write_cache(data_dir: str | os.PathLike, out_dir: pathlib.Path) -> pathlib.Path:
  """The original's NumPy cache of Omniglot, from this project's .npz files: our images have
  ink 255 on 0, the original's ink 0 on a white (255) background."""
  images = read_omniglot(data_dir).images
  out_dir.mkdir(parents=True, exist_ok=True)
  path = out_dir / "omniglot.npy"
  np.save(path, 255 - images)
  return path


def check_original(original: pathlib.Path, python: pathlib.Path) -> None:
  if not (original / SCRIPT).is_file():
    raise SystemExit(f"{original} has no {SCRIPT}: it is not a checkout of google-research/google-research "
                     f"with the HyperTransformer; {FETCH_HINT}.")
  found = subprocess.run([str(python), "-c", "import tensorflow, tf_slim, tensorflow_addons"],
                         capture_output=True, text=True) if python.is_file() else None
  if found is None or found.returncode != 0:
    raise SystemExit(f"{python} cannot import tensorflow, tf_slim and tensorflow_addons, which the original "
                     f"needs: give --python a Python with them installed (measured with tensorflow-cpu 2.15.1, "
                     f"tensorflow-addons 0.23.0, tf-slim, tensorflow-datasets 4.9.4, numpy 1.26.4).")


def run_original(original: pathlib.Path, python: pathlib.Path, cache_dir: pathlib.Path, steps: int,
                 work_dir: pathlib.Path) -> tuple[float, float]:
  """Trains the original for `steps` steps from scratch; its wall seconds and peak RSS in MB.
  When it fails, its output is kept as benchmarks/results/original_tf.log."""
  log_dir = work_dir / f"logs_{steps}"
  bin_dir = work_dir / "bin"       # the script calls `python`: ours, whatever else is on PATH
  bin_dir.mkdir(exist_ok=True)
  launcher = bin_dir / "python"    # a script, not a symlink: a venv's Python finds its venv by its own path
  launcher.write_text(f'#!/bin/sh\nexec "{python}" "$@"\n')
  launcher.chmod(0o755)
  shutil.rmtree(log_dir, ignore_errors=True)   # else it resumes from its checkpoint
  output = work_dir / f"original_{steps}.log"
  env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
  peak_file = work_dir / "peak_rss_kb"
  args = [sys.executable, "-c", PEAK_RSS_LAUNCHER, str(peak_file),
          "bash", str(SCRIPT), f"--data_numpy_dir={cache_dir}", f"--train_log_dir={log_dir}",
          f"--train_steps={steps}", f"--steps_between_saves={NO_SAVES}"]
  start = time.perf_counter()
  with open(output, "w") as out:
    status = subprocess.run(args, cwd=original, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
  seconds = time.perf_counter() - start
  if status != 0:
    common.RESULTS.mkdir(exist_ok=True)
    kept = common.RESULTS / "original_tf.log"
    kept.write_text(output.read_text())
    raise SystemExit(f"the original exited with status {status} after {seconds:.0f} s; its output is in {kept}.")
  return seconds, int(peak_file.read_text()) / 1024


def rate_from_runs(short: tuple[int, float], long: tuple[int, float]) -> float:
  """Episodes/s from (steps, seconds) of a short and a long run: one episode per step."""
  extra_steps, extra_seconds = long[0] - short[0], long[1] - short[1]
  if extra_steps <= 0 or extra_seconds <= 0:
    raise ValueError(f"the long run ({long[0]} steps, {long[1]:.1f} s) must train more steps and take longer "
                     f"than the short one ({short[0]} steps, {short[1]:.1f} s); give --steps further apart.")
  return extra_steps / extra_seconds


def measure(original: pathlib.Path, python: pathlib.Path, data_dir: os.PathLike, rounds: int, steps: tuple[int, int],
            jax_episodes: int, seconds: float, work_dir: pathlib.Path) -> dict:
  cache_dir = write_cache(data_dir, work_dir / "cache").parent
  worker = None
  if jax_episodes:
    env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", **os.environ}
    worker = Worker(set(os.sched_getaffinity(0)), "omniglot_1shot_v1", jax_episodes, env=env)
  try:
    if worker:
      worker.wait_ready()
      jax_steps = worker.steps_per_block(seconds, jax_episodes)
    results = []
    for i in range(rounds):
      order = steps if i % 2 == 0 else steps[::-1]
      runs = {n: run_original(original, python, cache_dir, n, work_dir) for n in order}
      row = {"original_s": {str(n): runs[n][0] for n in steps},
             "original_peak_rss_mb": max(rss for _, rss in runs.values()),
             "original": rate_from_runs(*((n, runs[n][0]) for n in steps))}
      if worker:
        # A short block first, kept apart from the timed one: the worker has sat idle through the
        # original's runs, and its first block after them read as low as 0.87x the next round's.
        worker.start(max(2, jax_steps // 4))
        row["jax_after_idle"] = worker.rate()
        worker.start(jax_steps)
        row["jax"] = worker.rate()
        row["jax_over_original"] = row["jax"] / row["original"]
      results.append(row)
      print(f"round {i + 1}/{rounds}: original {row['original']:.1f} episodes/s"
            + (f", ht_jax {row['jax']:.1f} ({row['jax_over_original']:.2f}x)" if worker else ""), flush=True)
  finally:
    if worker:
      worker.close()
  summary = {key: spread([r[key] for r in results]) for key in ("original", "jax", "jax_over_original")
             if key in results[0]}
  return {"config": "omniglot_1shot_v1", "original_steps": list(steps), "jax_episodes_per_step": jax_episodes,
          "rounds": results, "original_peak_rss_mb": max(r["original_peak_rss_mb"] for r in results), **summary}


def table(result: dict) -> str:
  lines = ["| omniglot_1shot_v1, 2-run difference / warm worker | episodes/s median (min-max) |", "|---|---|"]
  o = result["original"]
  lines.append(f"| original TF (1 per step; peak RSS {result['original_peak_rss_mb']:.0f} MB) "
               f"| {o['median']:.1f} ({o['min']:.1f}-{o['max']:.1f}) |")
  if "jax" in result:
    j, x = result["jax"], result["jax_over_original"]
    lines.append(f"| ht_jax ({result['jax_episodes_per_step']} per step) | {j['median']:.1f} ({j['min']:.1f}-{j['max']:.1f}) |")
    lines.append(f"\nht_jax / original: {x['median']:.2f}x (per-round ratios {x['min']:.2f}-{x['max']:.2f}, "
                 f"median of {len(result['rounds'])} rounds).")
  return "\n".join(lines)


def step_pair(text: str) -> tuple[int, int]:
  try:
    short, long = (int(s) for s in text.split(","))
  except ValueError:
    short = long = 0
  if not 0 < short < long:
    raise argparse.ArgumentTypeError(f"--steps {text!r}: give two step counts, the shorter first, e.g. 300,2300.")
  return short, long


def main():
  parser = argparse.ArgumentParser(description=common.cli_description(__doc__))
  parser.add_argument("--original", type=pathlib.Path, required=True,
                      help="a checkout of google-research/google-research holding hypertransformer/")
  parser.add_argument("--python", type=pathlib.Path, required=True, help="a Python with TensorFlow 2 for it")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=step_pair, default=(300, 2300), help="the two run lengths, short,long")
  parser.add_argument("--jax-episodes", type=int, default=64, help="ht_jax's episodes per step (0: none)")
  parser.add_argument("--seconds", type=float, default=10.0, help="length of one ht_jax block")
  args = parser.parse_args()
  if args.rounds < 1 or args.seconds <= 0 or args.jax_episodes < 0:
    raise SystemExit("benchmarks.original_tf needs --rounds of at least 1, --seconds above 0 and "
                     "--jax-episodes of 0 or more.")
  original, python = args.original.resolve(), args.python.absolute()
  check_original(original, python)
  with tempfile.TemporaryDirectory(prefix="original_tf_") as work:
    data_dir = resolve_data_dir(types.SimpleNamespace(dir=""))   # $HT_DATA_DIR, as the other benchmarks
    result = measure(original, python, data_dir, args.rounds, args.steps,
                     args.jax_episodes, args.seconds, pathlib.Path(work))
  common.report("original_tf", result, table(result))


if __name__ == "__main__":
  main()
