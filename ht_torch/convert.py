"""JAX/Flax parameters <-> torch state_dict, table-driven and checked name by name and shape by shape.

Tree paths are identical in both models (`generators.2.transformer.layers.0.attention.query`);
only leaf names and layouts differ, as listed in LEAF_RULES.
"""

from __future__ import annotations

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
