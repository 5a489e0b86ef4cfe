"""JAX/Flax parameters <-> torch state_dict, table-driven and checked name by name and shape by shape.

Tree paths are identical in both models (`generators.2.transformer.layers.0.attention.query`);
only leaf names and layouts differ, as listed in LEAF_RULES. On disk the torch side is a
safetensors file (no pickle) whose metadata carries the config and step it was made with.

  python -m ht_torch.convert --from-jax WORKDIR --out model.safetensors [--step N]
  python -m ht_torch.convert --from-torch model.safetensors --config=configs/X.py --workdir OUTDIR

The second writes an Orbax checkpoint (step from the file, fresh optimiser state) that
`ht_jax.evaluate` reads and `ht_jax.train` resumes from.
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import torch
from flax import nnx


class ConversionError(ValueError):
  """A parameter is missing, extra or has the wrong shape; the message names the first one."""


def _is_generated_cnn_kernel(path: str) -> bool:
  return path.startswith("cnn_layers.")   # learned CNN kernels stay HWIO in both (used as matrices)


# (condition on path and array, JAX leaf, torch leaf, JAX -> torch layout, torch -> JAX layout)
LEAF_RULES = [
    # Linear kernel (in, out) <-> weight (out, in)
    (lambda p, a: a.ndim == 2 and p.endswith(".kernel") and not _is_generated_cnn_kernel(p),
     "kernel", "weight", lambda a: a.T, lambda t: t.T),
    # Conv kernel HWIO <-> weight OIHW
    (lambda p, a: a.ndim == 4 and p.endswith(".kernel") and not _is_generated_cnn_kernel(p),
     "kernel", "weight", lambda a: a.transpose(3, 2, 0, 1), lambda t: t.transpose(2, 3, 1, 0)),
    # LayerNorm scale <-> weight (only LayerNorms have a 'scale' leaf)
    (lambda p, a: p.endswith(".scale"), "scale", "weight", lambda a: a, lambda t: t),
]


def _jax_flat(params: nnx.State) -> dict[str, np.ndarray]:
  return {".".join(str(k) for k in path): np.asarray(v[...])
          for path, v in nnx.to_flat_state(params)}


def _rule(path: str, array: np.ndarray):
  for condition, jax_leaf, torch_leaf, to_torch, to_jax in LEAF_RULES:
    if condition(path, array):
      return jax_leaf, torch_leaf, to_torch, to_jax
  return None


def jax_to_torch(params: nnx.State) -> dict[str, torch.Tensor]:
  out = {}
  for path, array in _jax_flat(params).items():
    rule = _rule(path, array)
    if rule is None:
      out[path] = torch.from_numpy(np.array(array))
    else:
      jax_leaf, torch_leaf, to_torch, _ = rule
      out[path[: -len(jax_leaf)] + torch_leaf] = torch.from_numpy(np.array(to_torch(array)))
  return out


def load_into_torch(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
  """Loads `state` after checking every name and shape against the freshly built `model`."""
  expected = model.state_dict()
  for name in sorted(set(expected) | set(state)):
    if name not in state:
      raise ConversionError(f"parameter {name} (shape {tuple(expected[name].shape)}) is missing from the "
                            f"converted weights; they were made with another config.")
    if name not in expected:
      raise ConversionError(f"parameter {name} (shape {tuple(state[name].shape)}) does not exist in this "
                            f"model; the weights were made with another config.")
    if tuple(state[name].shape) != tuple(expected[name].shape):
      raise ConversionError(f"parameter {name} has shape {tuple(state[name].shape)} in the weights but "
                            f"{tuple(expected[name].shape)} in this model; use the config they were made with.")
  model.load_state_dict(state, strict=True)


def torch_to_jax(state: dict[str, torch.Tensor], reference: nnx.State) -> nnx.State:
  """Fills the structure of `reference` (e.g. a freshly built model's params) from `state`."""
  flat = _jax_flat(reference)
  arrays, used = {}, set()
  for path, ref in flat.items():
    rule = _rule(path, ref)
    name = path if rule is None else path[: -len(rule[0])] + rule[1]
    if name not in state:
      raise ConversionError(f"parameter {name} (JAX {path}, shape {ref.shape}) is missing from the torch "
                            f"weights; they were made with another config.")
    value = state[name].detach().cpu().numpy()
    value = value if rule is None else rule[3](value)
    if value.shape != ref.shape:
      raise ConversionError(f"parameter {name} has shape {value.shape} (as JAX) in the torch weights but "
                            f"{ref.shape} in this model; use the config they were made with.")
    arrays[path] = value.astype(ref.dtype)
    used.add(name)
  extra = sorted(set(state) - used)
  if extra:
    raise ConversionError(f"parameter {extra[0]} of the torch weights does not exist in this model; "
                          f"they were made with another config.")
  leaves = [arrays[".".join(str(k) for k in path)] for path, _ in nnx.to_flat_state(reference)]
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(reference), [jax.numpy.asarray(a) for a in leaves])


# --- safetensors files ------------------------------------------------------------------------------

def save_safetensors(state: dict[str, torch.Tensor], path: str | pathlib.Path, config, step: int) -> pathlib.Path:
  from safetensors.torch import save_file
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  metadata = {"format": "hypertransformer", "step": str(int(step)),
              "config": config.to_json_best_effort()}
  save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path), metadata=metadata)
  return path


def load_safetensors(path: str | pathlib.Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
  """(state_dict, metadata); one-sentence ConversionError for a missing or non-safetensors file."""
  from safetensors import SafetensorError, safe_open
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConversionError(f"weights file {path} does not exist; pass the .safetensors file written by "
                          f"ht_torch.convert --from-jax or ht_torch.train.")
  try:
    with safe_open(str(path), framework="pt") as f:
      return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
  except (SafetensorError, OSError, ValueError) as e:
    raise ConversionError(f"{path} is not a readable safetensors file ({e}); convert the weights again "
                          f"with ht_torch.convert.") from None


def check_same_model(metadata: dict[str, str], config, path) -> None:
  """Names the first model setting where the file's config and `config` differ (shapes alone would
  not catch e.g. relu vs lrelu)."""
  if "config" not in metadata:
    return
  saved = json.loads(metadata["config"]).get("model", {})
  wanted = json.loads(config.to_json_best_effort()).get("model", {})
  for key in sorted(set(saved) | set(wanted)):
    if saved.get(key) != wanted.get(key):
      raise ConversionError(f"{path} was made with model.{key}={saved.get(key)!r} but the config has "
                            f"{wanted.get(key)!r}; pass the config the weights were made with.")


def config_from_workdir(workdir: str | pathlib.Path):
  import ml_collections
  path = pathlib.Path(workdir) / "config.json"
  if not path.is_file():
    raise ConversionError(f"{path} does not exist; pass --config=configs/X.py with the config {workdir} "
                          f"was trained with.")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def jax_workdir_to_safetensors(workdir, out, config=None, step: int | None = None) -> pathlib.Path:
  """The params of a JAX checkpoint (latest, or `step`) as a torch safetensors file."""
  from ht_jax.checkpoint import Checkpointer
  from ht_jax.train import initial_state
  config = config if config is not None else config_from_workdir(workdir)
  checkpointer = Checkpointer(workdir, async_save=False)
  try:
    steps = checkpointer.all_steps()
    step = steps[-1] if (step is None and steps) else step
    if step is None or step not in steps:
      raise ConversionError(f"no checkpoint{'' if step is None else f' at step {step}'} in "
                            f"{checkpointer.directory} (it has {steps or 'none'}); train first or pass --step.")
    _, target = initial_state(config)
    params = checkpointer.restore(step, target)["params"]
  finally:
    checkpointer.close()
  return save_safetensors(jax_to_torch(params), out, config, step)


def safetensors_to_jax_workdir(path, config, workdir) -> int:
  """Writes the weights of `path` as an Orbax checkpoint in `workdir`; returns its step."""
  from ht_jax.checkpoint import Checkpointer
  from ht_jax.optimizer import make_optimizer
  from ht_jax.train import initial_state
  state, metadata = load_safetensors(path)
  check_same_model(metadata, config, path)
  _, target = initial_state(config)
  params = torch_to_jax(state, target["params"])
  step = int(metadata.get("step", 0))
  workdir = pathlib.Path(workdir)
  checkpointer = Checkpointer(workdir, async_save=False)
  try:
    if step in checkpointer.all_steps():
      raise ConversionError(f"{checkpointer.directory} already has a checkpoint at step {step}; "
                            f"pass an empty --workdir so nothing saved is overwritten.")
    checkpointer.save(step, {"params": params, "opt_state": make_optimizer(config.train).init(params), "step": step})
  finally:
    checkpointer.close()
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  return step


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (default: WORKDIR/config.json).")
  _FROM_JAX = flags.DEFINE_string("from_jax", None, "A JAX training workdir to convert.")
  _FROM_TORCH = flags.DEFINE_string("from_torch", None, "A .safetensors file to convert.")
  _OUT = flags.DEFINE_string("out", None, "With --from-jax: the .safetensors file to write.")
  _WORKDIR = flags.DEFINE_string("workdir", None, "With --from-torch: the JAX workdir to write.")
  _STEP = flags.DEFINE_integer("step", None, "With --from-jax: the checkpoint step (default: latest).")

  def main(argv):
    import sys
    from absl import logging
    from ht_data import DataError
    from ht_jax.checkpoint import CheckpointMismatchError
    from ht_jax.model.plan import ConfigError
    logging.set_verbosity(logging.WARNING)
    try:
      if _FROM_JAX.value and _OUT.value:
        path = jax_workdir_to_safetensors(_FROM_JAX.value, _OUT.value, _CONFIG.value, _STEP.value)
        print(f"wrote {path}")
      elif _FROM_TORCH.value and _WORKDIR.value and _CONFIG.value is not None:
        step = safetensors_to_jax_workdir(_FROM_TORCH.value, _CONFIG.value, _WORKDIR.value)
        print(f"wrote an Orbax checkpoint at step {step} in {pathlib.Path(_WORKDIR.value) / 'checkpoints'}")
      else:
        sys.exit("error: pass --from-jax WORKDIR --out FILE.safetensors, or --from-torch FILE.safetensors "
                 "--config=configs/X.py --workdir OUTDIR.")
    except (ConversionError, DataError, ConfigError, CheckpointMismatchError) as e:
      sys.exit(f"error: {e}")
  app.run(main)
