"""`python -m parity_tests.agreement --config=configs/X.py --workdir=DIR [--split test]`: converts the
latest JAX checkpoint of DIR to torch (through a safetensors file) and counts how many evaluation
queries the two frameworks classify the same way, on the evaluation protocol's tasks."""

from __future__ import annotations

import json
import pathlib
import tempfile

import numpy as np

import ht_data
from ht_data import protocol


def prediction_agreement(config, workdir, split: str = "test", chunk: int = 5) -> dict:
  from ht_jax.checkpoint import Checkpointer
  from ht_jax.evaluate import make_task_predictions_fn
  from ht_jax.train import initial_state
  from ht_torch import evaluate as torch_evaluate
  from ht_torch.convert import jax_workdir_to_safetensors
  graphdef, target = initial_state(config)
  checkpointer = Checkpointer(workdir, async_save=False)
  step = checkpointer.latest_step()
  params = checkpointer.restore(step, target)["params"]
  checkpointer.close()
  with tempfile.TemporaryDirectory() as tmp:
    weights = jax_workdir_to_safetensors(workdir, pathlib.Path(tmp) / "model.safetensors", config, step)
    torch_model, _ = torch_evaluate.load_model(config, weights)
  jax_predict = make_task_predictions_fn(graphdef)
  sampler = protocol.split_samplers(config, ht_data.load_dataset(config.data))[split]
  agree = total = jax_correct = torch_correct = 0
  for real, (sx, sy, qx, qy) in protocol.task_chunks(sampler, config.eval, chunk):
    j = np.asarray(jax_predict(params, sx, sy, qx))[:real]
    t = torch_evaluate.task_predictions(torch_model, sx[:real], sy[:real], qx[:real])
    agree += int((j == t).sum())
    total += j.size
    jax_correct += int((j == qy[:real]).sum())
    torch_correct += int((t == qy[:real]).sum())
  return {"step": int(step), "split": split, "queries": total, "same_prediction": agree / total,
          "jax_accuracy": jax_correct / total, "torch_accuracy": torch_correct / total}


if __name__ == "__main__":
  from absl import app, flags
  from ht_jax import cli
  _SPLIT = flags.DEFINE_string("split", "test", "Evaluation split.")
  app.run(lambda argv: print(json.dumps(prediction_agreement(cli.CONFIG.value, cli.WORKDIR.value, _SPLIT.value), indent=2)))
