"""Evaluation: `python -m ht_jax.evaluate --config=... --workdir=DIR [--once | --watch]`.

The original protocol (HT_REFERENCE 10): per split, `eval.num_task_evals` tasks; each task has one
fixed support set and `eval.num_eval_batches` query batches of `eval.batch_size`, BN statistics
per query batch; task accuracy is the mean over its batches, the split's accuracy the mean over
tasks, reported with a 95% confidence interval over tasks. Evaluation episodes depend only on
`eval.seed`, so every checkpoint is measured on the same tasks. Tasks are sharded over every device
of every host like training episodes; the numbers do not depend on the device count.
Writes DIR/eval/step_<N>.json, DIR/eval/latest.json and DIR/eval/accuracy.png.
"""

from __future__ import annotations

if __name__ == "__main__":   # first, before jax or torch loads: the command restarts with mimalloc
  from ht_jax.allocator import restart_with_mimalloc   # (ht_jax/allocator.py; HT_ALLOCATOR=system: off)
  restart_with_mimalloc()

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

import ht_data
from ht_data import protocol
from ht_jax import parallel
from ht_jax.checkpoint import Checkpointer
from ht_jax.model.layers import forward_only_trace
from ht_jax.train import initial_state


def make_task_predictions_fn(graphdef):
  """[T, batches, Q] predicted labels: the CNN is generated once per task, then classifies every
  query batch (BN statistics per batch)."""
  @jax.jit
  def task_predictions(params, support_images, support_labels, query_images):
    model = nnx.merge(graphdef, params)
    def one_task(sx, sy, qx):                # qx: [num_batches, Q, H, W, C]
      weights, _ = model.generate(sx, sy)
      return jnp.argmax(jax.lax.map(lambda x: model.classify(weights, x), qx), -1)
    with forward_only_trace():
      return jax.vmap(one_task)(support_images, support_labels, query_images)
  return task_predictions


def make_task_accuracy_fn(graphdef, mesh=None):
  """[T] task accuracies: the CNN is generated once per task, then classifies every query batch.
  With a mesh, T is split over its devices."""
  def task_accuracy(params, support_images, support_labels, query_images, query_labels):
    model = nnx.merge(graphdef, params)
    def one_task(sx, sy, qx, qy):            # qx: [num_batches, Q, H, W, C]
      weights, _ = model.generate(sx, sy)
      # One query batch at a time: vmapping them held every batch's activations at once (26 GB
      # for miniImageNet's 8 tasks x 16 batches x 100 images) and was no faster.
      logits = jax.lax.map(lambda x: model.classify(weights, x), qx)
      return jnp.mean(jnp.argmax(logits, -1) == qy)
    groups = parallel.auto_groups(support_images.shape[0], mesh, support_images.shape[2])
    with forward_only_trace():   # nothing here is differentiated: the CNN's pooled convs as sums of taps
      return parallel.vmap_in_groups(one_task, groups)(support_images, support_labels, query_images, query_labels)
  return parallel.jit(task_accuracy, mesh, batch_argnums=(1, 2, 3, 4))


def task_accuracies(task_accuracy, params, sampler, config, mesh=None, desc: str = "") -> dict[str, np.ndarray]:
  """The accuracy of each of the `eval.num_task_evals` tasks, `tasks_per_call` (rounded up to a
  multiple of the device count) per call; each process samples only its own devices' tasks.
  Keyed by support variant (protocol.support_variants): "" and, if semi-supervised, "labelled_only"."""
  e = config.eval
  tasks, devices = int(e.num_task_evals), 1 if mesh is None else mesh.size
  chunk = -(-max(1, int(e.tasks_per_call)) // devices) * devices
  rows = None if mesh is None else parallel.local_rows(mesh, chunk)
  names = ("support_images", "support_labels", "query_images", "query_labels")
  chunks = protocol.task_chunks(sampler, e, chunk, rows)
  accuracies: dict[str, list] = {}
  for real, arrays in tqdm(chunks, total=-(-tasks // chunk), desc=desc, unit="call", leave=False,
                           disable=jax.process_index() != 0):
    for variant, variant_arrays in protocol.support_variants(config.data, arrays).items():
      batch = dict(zip(names, variant_arrays))
      if mesh is not None:
        batch = parallel.global_batch(mesh, batch, chunk)
      accuracies.setdefault(variant, []).extend(
          np.asarray(task_accuracy(params, *(batch[n] for n in names)))[:real].tolist())
  return {variant: np.asarray(a, np.float64) for variant, a in accuracies.items()}


def evaluate_split(task_accuracy, params, sampler, config, mesh=None, desc: str = "") -> dict:
  return protocol.split_result(task_accuracies(task_accuracy, params, sampler, config, mesh, desc))


class Evaluator:
  """Holds the model, the jitted protocol and the samplers; evaluates parameter sets on `mesh`
  (default: every device of every process)."""

  def __init__(self, config, mesh=None):
    self.config = config
    self.mesh = parallel.data_mesh() if mesh is None else mesh
    self.graphdef, target = initial_state(config)
    arrays = parallel.replicate({"params": target["params"], "opt_state": target["opt_state"]}, self.mesh)
    self.target = {**target, **arrays}   # restored checkpoints take this sharding
    self.task_accuracy = make_task_accuracy_fn(self.graphdef, self.mesh)
    self.samplers = protocol.split_samplers(config, ht_data.load_dataset(config.data))

  def evaluate(self, params, step: int) -> dict:
    splits = {name: evaluate_split(self.task_accuracy, params, sampler, self.config, self.mesh, f"eval {name}")
              for name, sampler in self.samplers.items()}
    return {"step": int(step), **protocol.task_description(self.config.data), "splits": splits}

  def evaluate_checkpoint(self, checkpointer: Checkpointer, step: int) -> dict:
    return self.evaluate(checkpointer.restore(step, self.target)["params"], step)


def write_result(workdir: pathlib.Path, result: dict) -> None:
  if jax.process_index() != 0:   # every process holds the same result; one writes it
    return
  eval_dir = workdir / "eval"
  eval_dir.mkdir(parents=True, exist_ok=True)
  text = json.dumps(result, indent=2)
  (eval_dir / f"step_{result['step']}.json").write_text(text)
  (eval_dir / "latest.json").write_text(text)
  plot_history(eval_dir)


def load_history(eval_dir: pathlib.Path) -> list[dict]:
  rows = [json.loads(p.read_text()) for p in eval_dir.glob("step_*.json")]
  return sorted(rows, key=lambda r: r["step"])


def plot_history(eval_dir: pathlib.Path) -> pathlib.Path:
  """accuracy.png: the evaluated accuracy of each split against step (95% interval as error bars),
  over the training curves of metrics.jsonl (query accuracy, and the original's one-episode
  monitor on test classes), so that even a single evaluation sits in context."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from ht_jax.metrics import read_metrics
  rows = load_history(eval_dir)
  curves = read_metrics(eval_dir.parent / "metrics.jsonl")
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
  if curves:
    steps = np.asarray([r["step"] for r in curves])
    for key, label in (("accuracy", "training query accuracy"), ("test_accuracy", "monitor (1 test episode)")):
      values = np.asarray([r.get(key, np.nan) for r in curves]) * 100
      width = max(1, len(values) // 25)   # running mean: the monitor is one noisy episode
      smooth = np.convolve(values, np.ones(width) / width, mode="valid")
      ax.plot(steps[width - 1:], smooth, lw=1, alpha=0.6, label=label)
  for split in sorted({s for r in rows for s in r["splits"]}):
    pts = [(r["step"], r["splits"][split]["accuracy"] * 100, r["splits"][split]["ci95"] * 100)
           for r in rows if split in r["splits"]]
    steps, acc, ci = map(np.asarray, zip(*pts))
    ax.errorbar(steps, acc, yerr=ci, marker="o", capsize=3, label=f"eval {split} ({acc[-1]:.1f}%)")
  if rows:
    ax.set_title(f"{rows[-1]['ways']}-way {rows[-1]['shots']}-shot accuracy (eval: 95% CI over tasks)")
  ax.set_xlabel("training step")
  ax.set_ylabel("accuracy (%)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  path = eval_dir / "accuracy.png"
  fig.savefig(path)
  plt.close(fig)
  return path


def format_table(result: dict) -> str:
  """Markdown table of a result; semi-supervised results add the labelled-only accuracy of the same
  tasks and the paired gain from the unlabelled samples."""
  semi = any("labelled_only" in s for s in result["splits"].values())
  unlabelled = f" + {result['unlabelled_per_class']} unlabelled" if result.get("unlabelled_per_class") else ""
  lines = [f"{result['ways']}-way {result['shots']}-shot{unlabelled}, step {result['step']}"]
  if semi:
    lines += ["| split | accuracy (%) | 95% CI | without unlabelled (%) | 95% CI | gain (points) | 95% CI | tasks |",
              "|---|---|---|---|---|---|---|---|"]
  else:
    lines += ["| split | accuracy (%) | 95% CI | tasks |", "|---|---|---|---|"]
  for name, s in result["splits"].items():
    cells = [name, f"{100 * s['accuracy']:.2f}", f"+- {100 * s['ci95']:.2f}"]
    if semi:
      lo, gain = s["labelled_only"], s["unlabelled_gain"]
      cells += [f"{100 * lo['accuracy']:.2f}", f"+- {100 * lo['ci95']:.2f}",
                f"{100 * gain['accuracy']:+.2f}", f"+- {100 * gain['ci95']:.2f}"]
    lines.append("| " + " | ".join(cells + [str(s["tasks"])]) + " |")
  return "\n".join(lines)


def evaluate_once(config, workdir, step: int | None = None) -> dict:
  parallel.initialize(config.parallel)
  workdir = pathlib.Path(workdir)
  checkpointer = Checkpointer(workdir, async_save=False)
  step = checkpointer.latest_step() if step is None else step
  if step is None:
    raise ht_data.DataError(f"no checkpoint in {checkpointer.directory}; train first with "
                            f"python -m ht_jax.train --workdir={workdir}.")
  result = Evaluator(config).evaluate_checkpoint(checkpointer, step)
  write_result(workdir, result)
  return result


def watch(config, workdir, poll_seconds: float = 10.0, timeout_hours: float = 0.0) -> list[dict]:
  """Evaluates every new checkpoint until the one of the training's last step (like the
  original's evaluate_model.py); checkpoints deleted before their turn are skipped."""
  parallel.initialize(config.parallel)
  workdir = pathlib.Path(workdir)
  evaluator, checkpointer = None, None
  results, done_steps = [], {r["step"] for r in load_history(workdir / "eval")}
  started = time.time()
  while True:
    if checkpointer is None and (workdir / "checkpoints").exists():
      checkpointer = Checkpointer(workdir, async_save=False)
    steps = checkpointer.all_steps() if checkpointer else []
    for step in [s for s in steps if s not in done_steps]:
      evaluator = evaluator or Evaluator(config)
      try:
        result = evaluator.evaluate_checkpoint(checkpointer, step)
      except (FileNotFoundError, ValueError) as e:
        if "another config" in str(e):
          raise
        continue   # deleted by keep-N while we were busy
      write_result(workdir, result)
      if jax.process_index() == 0:
        print(format_table(result), flush=True)
      results.append(result)
      done_steps.add(step)
    final = _final_step(workdir)
    last = max(done_steps, default=-1)
    if (final is not None and last >= final) or last >= int(config.train.steps):
      return results
    if timeout_hours and time.time() - started > 3600 * timeout_hours:
      return results
    time.sleep(poll_seconds)
    if checkpointer is not None:
      checkpointer.manager.reload()   # see checkpoints written by the training process


def _final_step(workdir: pathlib.Path) -> int | None:
  path = workdir / "train_done.json"
  return json.loads(path.read_text())["final_step"] if path.exists() else None


if __name__ == "__main__":
  from absl import app, flags
  from ht_jax import cli
  _ONCE = flags.DEFINE_bool("once", False, "Evaluate the latest checkpoint (or --step) and exit.")
  _WATCH = flags.DEFINE_bool("watch", False, "Evaluate each new checkpoint until training ends.")
  _STEP = flags.DEFINE_integer("step", None, "Checkpoint step for --once (default: latest).")

  def main(argv):
    def go():
      if _WATCH.value:
        watch(cli.CONFIG.value, cli.WORKDIR.value)
      else:
        result = evaluate_once(cli.CONFIG.value, cli.WORKDIR.value, _STEP.value)
        if jax.process_index() == 0:
          print(format_table(result))
          print(f"wrote {pathlib.Path(cli.WORKDIR.value) / 'eval' / 'latest.json'} and accuracy.png")
    cli.run(go)
  app.run(main)
