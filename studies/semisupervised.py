"""Does HT use unlabelled support samples, and does that need two transformer layers (the paper's claim)?

  python -m studies.semisupervised [--setting 5way] [--layers 1 2 3] [--steps 8000] [--tasks 200] [--out runs/semi]

For each transformer depth, two arms train for the same number of steps on the same episodes'
classes (configs/omniglot_semisupervised.py): `semi` sees 1 labelled + U unlabelled support samples
per class, `supervised` only the labelled one. Every checkpoint is then evaluated on the SAME test
tasks (the semi config's), each task once with its unlabelled samples and once without, so every
comparison is a paired per-task difference with a 95% interval over tasks. Training is resumable:
an arm whose run finished is not trained again. Writes OUT/study.json, OUT/study.md, OUT/study.png.
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

import numpy as np

from ht_data import protocol

CONFIG = "configs/omniglot_semisupervised.py"


def arm_config(setting: str, arm: str, layers: int, steps: int | None = None):
  from configs import omniglot_semisupervised
  c = omniglot_semisupervised.get_config(setting + (",supervised" if arm == "supervised" else ""))
  c.model.num_layers = layers
  if steps:
    c.train.steps = steps
  return c


def train_arm(setting: str, arm: str, layers: int, steps: int, workdir: pathlib.Path) -> None:
  done = workdir / "train_done.json"
  if done.exists() and json.loads(done.read_text())["final_step"] >= steps:
    print(f"{workdir.name}: already trained ({steps} steps)")
    return
  spec = setting + (",supervised" if arm == "supervised" else "")
  command = [sys.executable, "-m", "ht_jax.train", f"--config={CONFIG}:{spec}", f"--workdir={workdir}",
             f"--config.model.num_layers={layers}", f"--config.train.steps={steps}"]
  print(f"{workdir.name}: training {steps} steps", flush=True)
  subprocess.run(command, check=True, env=os.environ)


def per_task_accuracies(setting: str, layers: int, workdir: pathlib.Path, tasks: int) -> dict[str, np.ndarray]:
  """Test-task accuracies of the arm's last checkpoint on the semi config's tasks, keyed by support
  variant ("" with the unlabelled samples, "labelled_only" without)."""
  from ht_jax.checkpoint import Checkpointer
  from ht_jax.evaluate import Evaluator, task_accuracies
  config = arm_config(setting, "semi", layers)
  config.eval.splits, config.eval.num_task_evals = "test", tasks
  evaluator = Evaluator(config)
  checkpointer = Checkpointer(workdir, async_save=False)
  params = checkpointer.restore(checkpointer.latest_step(), evaluator.target)["params"]
  checkpointer.close()
  return task_accuracies(evaluator.task_accuracy, params, evaluator.samplers["test"], config,
                         evaluator.mesh, desc=workdir.name)


def summary(values) -> dict:
  s = protocol.summarise(values)
  return {"mean": 100 * s["accuracy"], "ci95": 100 * s["ci95"], "tasks": s["tasks"]}


def study_rows(per_task: dict[tuple[int, str], dict[str, np.ndarray]], layers) -> list[dict]:
  rows = []
  for depth in layers:
    semi, supervised = per_task[(depth, "semi")], per_task[(depth, "supervised")]
    rows.append({
        "layers": depth,
        "supervised": summary(supervised["labelled_only"]),
        "semi_without_unlabelled": summary(semi["labelled_only"]),
        "semi_with_unlabelled": summary(semi[""]),
        "gain_within_semi": summary(semi[""] - semi["labelled_only"]),
        "gain_over_supervised": summary(semi[""] - supervised["labelled_only"]),
    })
  return rows


def markdown(rows: list[dict], header: str) -> str:
  def cell(s, signed=False):
    return f"{s['mean']:+.2f} ± {s['ci95']:.2f}" if signed else f"{s['mean']:.2f} ± {s['ci95']:.2f}"
  lines = [header, "",
           "| transformer layers | supervised arm (%) | semi arm, without unlabelled (%) | semi arm, with unlabelled (%) "
           "| gain from unlabelled, same model (points) | semi with unlabelled − supervised (points) |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['layers']} | {cell(r['supervised'])} | {cell(r['semi_without_unlabelled'])} | "
                 f"{cell(r['semi_with_unlabelled'])} | {cell(r['gain_within_semi'], True)} | "
                 f"{cell(r['gain_over_supervised'], True)} |")
  return "\n".join(lines)


def plot(rows: list[dict], path: pathlib.Path, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  arms = [("supervised", "supervised arm"), ("semi_without_unlabelled", "semi arm, unlabelled removed"),
          ("semi_with_unlabelled", "semi arm, with unlabelled")]
  fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
  x = np.arange(len(rows))
  for i, (key, label) in enumerate(arms):
    ax.bar(x + (i - 1) * 0.27, [r[key]["mean"] for r in rows], 0.27, yerr=[r[key]["ci95"] for r in rows],
           capsize=3, label=label)
  ax.set_xticks(x, [f"{r['layers']} layer{'s' if r['layers'] > 1 else ''}" for r in rows])
  low = min(r[k]["mean"] for r in rows for k, _ in arms)
  ax.set_ylim(max(0, low - 10), 100)
  ax.set_ylabel("test accuracy (%), 95% CI over tasks")
  import textwrap
  ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=8)
  ax.legend(fontsize=8, loc="lower right")
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--setting", default="5way", choices=["5way", "20way"])
  parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3])
  parser.add_argument("--steps", type=int, default=8000, help="training steps of every arm")
  parser.add_argument("--tasks", type=int, default=200, help="test tasks (the same for every arm)")
  parser.add_argument("--out", default="runs/semi")
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  for depth in args.layers:
    for arm in ("semi", "supervised"):
      train_arm(args.setting, arm, depth, args.steps, out / f"{arm}_L{depth}")
  per_task = {(depth, arm): per_task_accuracies(args.setting, depth, out / f"{arm}_L{depth}", args.tasks)
              for depth in args.layers for arm in ("semi", "supervised")}
  rows = study_rows(per_task, args.layers)
  d = arm_config(args.setting, "semi", args.layers[0]).data
  header = (f"{d.num_labels}-way 1-shot Omniglot test classes, {d.unlabeled_samples_per_class} unlabelled per class; "
            f"{args.steps} training steps per arm; {args.tasks} test tasks, the same for every row and column.")
  per_task_json = {f"{arm}_L{depth}": {variant or "with_unlabelled": accuracies.tolist()
                                        for variant, accuracies in variants.items()}
                   for (depth, arm), variants in per_task.items()}
  (out / "study.json").write_text(json.dumps({"setting": args.setting, "steps": args.steps, "tasks": args.tasks,
                                              "rows": rows, "per_task": per_task_json}, indent=1))
  text = markdown(rows, header)
  (out / "study.md").write_text(text + "\n")
  plot(rows, out / "study.png", header)
  print(text)
  print(f"wrote {out / 'study.json'}, {out / 'study.md'} and {out / 'study.png'}")


if __name__ == "__main__":
  main()
