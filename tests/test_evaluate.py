"""The evaluation protocol: counts, per-task means over query batches, JSON shape, plot, watch."""

import json

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ht_jax.evaluate import Evaluator, format_table, watch, write_result
from tests.test_train import small_config


def test_protocol_counts_and_task_means(tmp_path):
  c = small_config()
  c.eval.num_task_evals = 5          # not a multiple of tasks_per_call: the last call is padded
  c.eval.tasks_per_call = 2
  c.eval.num_eval_batches = 3
  c.eval.batch_size = 10
  c.eval.splits = "val,test"
  evaluator = Evaluator(c)
  params = evaluator.target["params"]
  result = evaluator.evaluate(params, step=7)
  assert result["ways"] == 5 and result["shots"] == 1 and result["step"] == 7
  assert set(result["splits"]) == {"val", "test"}
  assert all(s["tasks"] == 5 for s in result["splits"].values())

  # Recompute the test split by hand: per task, one generated CNN, mean over its query batches.
  model = nnx.merge(evaluator.graphdef, params)
  sampler = evaluator.samplers["test"]
  accs = []
  for task in range(5):
    support, qx, qy = sampler.eval_task(int(c.eval.seed), task, 3)
    assert qx.shape == (3, 10, 28, 28, 1) and qy.shape == (3, 10)
    weights, _ = model.generate(jnp.asarray(support.support_images[0]), jnp.asarray(support.support_labels[0]))
    accs.append(np.mean([np.mean(np.argmax(model.classify(weights, jnp.asarray(x)), -1) == y)
                         for x, y in zip(qx, qy)]))
  np.testing.assert_allclose(result["splits"]["test"]["accuracy"], np.mean(accs), atol=1e-6)
  np.testing.assert_allclose(result["splits"]["test"]["ci95"], 1.96 * np.std(accs, ddof=1) / np.sqrt(5),
                             atol=1e-6)

  write_result(tmp_path, result)
  saved = json.loads((tmp_path / "eval" / "latest.json").read_text())
  assert saved == json.loads((tmp_path / "eval" / "step_7.json").read_text()) == result
  assert set(saved["splits"]["test"]) == {"accuracy", "ci95", "tasks"}
  assert (tmp_path / "eval" / "accuracy.png").stat().st_size > 1000
  assert "| test |" in format_table(result)


def test_watch_evaluates_every_checkpoint_until_the_last(tmp_path):
  from ht_jax.train import train_and_evaluate
  c = small_config(steps=4, checkpoint_every=2)
  c.eval.num_task_evals = 2
  c.eval.num_eval_batches = 1
  c.eval.splits = "test"
  train_and_evaluate(c, tmp_path)
  results = watch(c, tmp_path, poll_seconds=0.1, timeout_hours=0.05)
  assert [r["step"] for r in results] == [0, 2, 4]
  assert sorted(p.name for p in (tmp_path / "eval").glob("step_*.json")) == [
      "step_0.json", "step_2.json", "step_4.json"]
