"""Data parallelism (ht_jax/parallel.py): eight simulated devices against one, two processes
against one, a stop signal to one of them and a resume, and the user errors. Everything runs in
subprocesses, so that XLA_FLAGS and jax.distributed never touch the JAX of the other tests."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from configs import quickstart
from ht_jax.checkpoint import Checkpointer
from ht_jax.metrics import read_metrics
from ht_jax.train import initial_state
from tests.parallel_checks import LEAN, apply, rel_diff
from tests.test_train import REPO


def devices_env(n: int) -> dict:
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()
  return {**os.environ, "XLA_FLAGS": flags}


def test_eight_devices_match_one_device():
  r = subprocess.run([sys.executable, "-m", "tests.parallel_checks"], cwd=REPO, env=devices_env(8),
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(next(l for l in r.stdout.splitlines() if l.startswith("RESULT "))[len("RESULT "):])
  # The batch really is split (2 episodes per device) and the parameters come back replicated.
  assert out["devices"] == 8 and out["batch_spec"] == "P('data',)" and out["params_spec"] == "P()"
  assert out["batch_shard_shapes"] == [[2, 10, 28, 28, 1]]
  # One step: loss, gradients, new parameters; then 20 steps of the training step (float64).
  assert out["dtype"] == "float64"
  for key in ("loss", "grads", "params_step1", "step_losses", "params_step20", "opt_state_step20"):
    assert out[key] < 1e-6, (key, out[key])
  assert out["params_moved"] > 1e-3   # the 20 steps trained, so their agreement means something
  # Evaluation: every task's accuracy and the summary are those of one device.
  assert out["eval_per_task_max_abs_diff"] == 0.0 and len(set(out["eval_per_task_one"])) > 1
  assert out["eval_eight"] == out["eval_one"] and out["eval_one"]["splits"]["test"]["tasks"] == 11
  # The augmentation in the step: each device augments its own episodes, as one device does.
  assert out["augment_spec"] == "P('data',)" and out["augment_max_abs_diff"] == 0.0


@pytest.mark.parametrize("devices, flag, message", [
    (4, "--config.train.episodes_per_step=6", "must be a multiple of the device count (4 over 1 process)"),
    (1, "--config.parallel.distributed=True", "set --config.parallel.coordinator_address=HOST:PORT"),
])
def test_parallel_user_errors_are_one_sentence(tmp_path, devices, flag, message):
  r = subprocess.run([sys.executable, "-m", "ht_jax.train", "--config=configs/quickstart.py:tiny",
                      f"--workdir={tmp_path}", flag], cwd=REPO, env=devices_env(devices),
                     capture_output=True, text=True, timeout=300)
  assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
  error = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(error) == 1 and message in error[0] and error[0].endswith("."), r.stderr[-2000:]


# --- Two processes on 127.0.0.1 ------------------------------------------------------------------

# Logged (and monitored: one more compile) only at the last step; a checkpoint after every step.
SETTINGS = {**LEAN, "model.num_layers": 1, "data.samples_cnn": 10, "train.optimizer": "sgd",
            "train.learning_rate": 0.05, "train.episodes_per_step": 4, "train.log_every": 1000,
            "train.checkpoint_every": 1}
REFERENCE_STEPS = 12


def train_command(workdir, steps: int, **settings) -> list[str]:
  flags = [f"--config.{k}={v}" for k, v in {**SETTINGS, "train.steps": steps, **settings}.items()]
  return [sys.executable, "-m", "ht_jax.train", "--config=configs/quickstart.py:tiny", f"--workdir={workdir}", *flags]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch_two(workdir, steps: int, logs: pathlib.Path, tag: str) -> list[subprocess.Popen]:
  """Two processes with two CPU devices each: one 4-device mesh, 2 episodes per process."""
  port = free_port()
  return [subprocess.Popen(
      train_command(workdir, steps, **{"parallel.coordinator_address": f"127.0.0.1:{port}",
                                       "parallel.num_processes": 2, "parallel.process_id": i}),
      cwd=REPO, env=devices_env(2), stdout=(logs / f"{tag}{i}.log").open("w"), stderr=subprocess.STDOUT)
      for i in range(2)]


def finished_steps(workdir) -> list[int]:
  """Checkpoints Orbax has finalised (a step is renamed to its number only when complete)."""
  directory = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit()) if directory.exists() else []


def log_tails(logs: pathlib.Path) -> str:
  return "\n".join(f"--- {f.name}\n{f.read_text()[-1500:]}" for f in sorted(logs.glob("*.log")))


def wait_ok(procs, logs, timeout=300):
  for p in procs:
    p.wait(timeout=timeout)
  assert all(p.returncode == 0 for p in procs), log_tails(logs)


@pytest.fixture
def processes():
  """Every subprocess a test starts; whatever still runs at the end (a failure) is killed."""
  started = []
  yield started
  for p in started:
    if p.poll() is None:
      p.kill()
      p.wait()


def test_two_processes_match_one_process_stop_together_and_resume(tmp_path, processes):
  two, one, logs = tmp_path / "two", tmp_path / "one", tmp_path / "logs"
  logs.mkdir()
  config = apply(quickstart.get_config("tiny"), SETTINGS)
  target = initial_state(config)[1]   # also fills the compilation cache for the subprocesses' init
  # The single-process reference (4 devices, the same global mesh size) runs alongside, saving
  # and logging every step so that any step the two-process run ends on can be compared.
  reference = subprocess.Popen(train_command(one, REFERENCE_STEPS, **{"train.keep_checkpoints": 100,
                                                                   "train.log_every": 1}),
                               cwd=REPO, env=devices_env(4), stdout=(logs / "reference.log").open("w"),
                               stderr=subprocess.STDOUT)
  processes.append(reference)
  # Two processes train and checkpoint every step; once step 2 is saved, process 1 alone gets
  # SIGTERM (as on a preempted host). Both must stop after the same step, save it, and exit.
  first = launch_two(two, 100000, logs, "first")
  processes.extend(first)
  deadline = time.time() + 300
  while not any(s >= 2 for s in finished_steps(two)):
    assert time.time() < deadline and all(p.poll() is None for p in first), log_tails(logs)
    time.sleep(0.05)
  first[1].send_signal(signal.SIGTERM)
  wait_ok(first, logs, timeout=120)
  stopped_at = max(finished_steps(two))
  assert f"Stopped at step {stopped_at} (another process was stopped)" in (logs / "first0.log").read_text()
  assert 2 <= stopped_at and stopped_at + 2 <= REFERENCE_STEPS, stopped_at
  # Both processes start again in the same workdir, resume from that checkpoint, train 2 steps.
  final = stopped_at + 2
  resumed = launch_two(two, final, logs, "resumed")
  processes.extend(resumed)
  wait_ok(resumed, logs)
  wait_ok([reference], logs)

  a = Checkpointer(two, async_save=False).restore(final, target)
  b = Checkpointer(one, async_save=False).restore(final, target)
  assert a["step"] == b["step"] == final
  params_diff = rel_diff(a["params"], b["params"])
  assert params_diff < 1e-6, params_diff
  assert rel_diff(a["params"], target["params"]) > 1e-4   # they trained
  # Metrics and the progress bar: process 0 alone wrote them (one row, not two). The row's loss
  # is the mean over the steps of this run: the reference's last two steps if it resumed (from
  # scratch it would average four).
  rows, ref = read_metrics(two / "metrics.jsonl"), {r["step"]: r for r in read_metrics(one / "metrics.jsonl")}
  assert [r["step"] for r in rows] == [final]
  expected = (ref[final - 1]["loss"] + ref[final]["loss"]) / 2
  loss_diff = abs(rows[0]["loss"] - expected) / expected
  assert loss_diff < 1e-6, loss_diff
  assert f"{stopped_at}/{final}" in (logs / "resumed0.log").read_text()   # the bar started at the checkpoint
  assert "step/s" not in (logs / "resumed1.log").read_text()
  print(f"stopped after step {stopped_at}, resumed to {final}: params {params_diff:.1e}, losses {loss_diff:.1e}")


def test_cpu_jit_gives_single_convolutions_to_eigen_not_ynnpack_with_equal_results():
  """parallel.jit's CPU compiler options (the 84x84 step 1.4x faster, README): XLA's default set
  of YNNPACK fusions less single convolutions. The kernel gradient must not be a YNNPACK fusion."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from ht_jax import parallel
  rng = np.random.default_rng(0)   # a conv large enough for XLA to give YNNPACK by default
  x, k = jnp.asarray(rng.normal(size=(20, 32, 32, 3)), jnp.float32), jnp.asarray(rng.normal(size=(3, 3, 3, 8)), jnp.float32)

  def loss(x, k):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jnp.tanh(y))

  grad = jax.grad(loss, argnums=(0, 1))
  ours, default = parallel.jit(grad, None, ()), jax.jit(grad)
  def ynn_fusions(compiled):   # a conv, its two gradients and elementwise work: no YNNPACK dot or reduce
    text = compiled.lower(x, k).compile().as_text()
    return sum("__ynn_fusion" in line and "fusion(" in line for line in text.splitlines())
  assert ynn_fusions(default) >= 1 and ynn_fusions(ours) == 0
  for a, b in zip(ours(x, k), default(x, k)):   # sums of 20k terms in another order: float32 rounding
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))
