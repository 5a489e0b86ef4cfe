"""Evaluation in torch: `python -m ht_torch.evaluate --config=configs/X.py --weights=model.safetensors --out=results.json`.

The same protocol on the same tasks as ht_jax.evaluate (ht_data.protocol, same seeds), writing the
same JSON: {"step", "ways", "shots", "unlabelled_per_class", "splits": {name: {"accuracy", "ci95",
"tasks"}}}, semi-supervised splits with "labelled_only" and "unlabelled_gain" too.
"""

from __future__ import annotations

if __name__ == "__main__":   # first, before jax or torch loads: the command restarts with mimalloc
  from ht_jax.allocator import restart_with_mimalloc   # (ht_jax/allocator.py; HT_ALLOCATOR=system: off)
  restart_with_mimalloc()

import json
import pathlib

import numpy as np
import torch
from tqdm import tqdm

import ht_data
from ht_data import protocol
from ht_torch.convert import check_same_model, load_into_torch, load_safetensors
from ht_torch.model.hypertransformer import HyperTransformer


@torch.no_grad()
def task_predictions(model: HyperTransformer, support_images, support_labels, query_images) -> np.ndarray:
  """[T, batches, Q] predicted labels; the CNN is generated once per task (twin of ht_jax.evaluate)."""
  out = []
  for sx, sy, qx in zip(support_images, support_labels, query_images):
    weights, _ = model.generate(torch.from_numpy(sx), sy)
    out.append(np.stack([model.classify(weights, torch.from_numpy(x)).argmax(-1).numpy() for x in qx]))
  return np.stack(out)


def load_model(config, weights_path) -> tuple[HyperTransformer, int]:
  state, metadata = load_safetensors(weights_path)
  check_same_model(metadata, config, weights_path)
  model = HyperTransformer(config)
  load_into_torch(model, state)
  return model.eval(), int(metadata.get("step", 0))


def evaluate(config, weights_path) -> dict:
  model, step = load_model(config, weights_path)
  samplers = protocol.split_samplers(config, ht_data.load_dataset(config.data))

  def task_accuracies(sx, sy, qx, qy):
    return (task_predictions(model, sx, sy, qx) == qy).mean(axis=(1, 2))

  splits = {}
  for name, sampler in samplers.items():
    progress = lambda chunks, total, name=name: tqdm(chunks, total=total, desc=f"eval {name}", unit="task", leave=False)
    splits[name] = protocol.evaluate_split(task_accuracies, sampler, config, chunk=1, progress=progress)
  return {"step": step, **protocol.task_description(config.data), "splits": splits}


if __name__ == "__main__":
  from absl import app, flags
  from ht_jax import cli   # defines --config
  _WEIGHTS = flags.DEFINE_string("weights", None, "A .safetensors file (ht_torch.convert or ht_torch.train).")
  _OUT = flags.DEFINE_string("out", None, "Where to write the results JSON.")

  def main(argv):
    import sys
    from ht_jax.evaluate import format_table
    from ht_torch.convert import ConversionError
    if cli.CONFIG.value is None or not _WEIGHTS.value or not _OUT.value:
      sys.exit("error: pass --config=configs/X.py --weights=FILE.safetensors --out=results.json.")
    try:
      result = evaluate(cli.CONFIG.value, _WEIGHTS.value)
    except (ConversionError, *cli.user_errors()) as e:
      sys.exit(f"error: {e}")
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(format_table(result))
    print(f"wrote {out}")
  app.run(main)
