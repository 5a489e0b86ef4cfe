"""Orbax checkpoints in `workdir/checkpoints`: keep N, async and atomic, restore against an
abstract target after checking that every parameter's shape matches this model."""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
  """The checkpoint was written by a model with another config."""


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  out = {}
  for path, leaf in leaves:
    name = "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)
    out[name.replace("/value", "")] = tuple(getattr(leaf, "shape", ()))
  return out


class Checkpointer:

  def __init__(self, workdir: str | pathlib.Path, keep: int = 3, async_save: bool = True):
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                             create=True),
        item_handlers=ocp.StandardCheckpointHandler())   # lets a fresh manager read metadata

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: dict) -> None:
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def check_compatible(self, step: int, target: dict) -> None:
    """Names the first parameter whose shape differs between the checkpoint and `target`."""
    saved = _flat_shapes(self.manager.item_metadata(step)["params"])
    wanted = _flat_shapes(target["params"])
    for name in sorted(set(saved) | set(wanted)):
      if saved.get(name) != wanted.get(name):
        raise CheckpointMismatchError(
            f"checkpoint step {step} in {self.directory} was made with another config: parameter "
            f"{name} has shape {saved.get(name, 'missing')} there but {wanted.get(name, 'missing')} in "
            f"this model; pass the config it was trained with, or use another --workdir.")
    saved = _flat_shapes(self.manager.item_metadata(step)["opt_state"])
    wanted = _flat_shapes(target["opt_state"])
    if saved != wanted:
      raise CheckpointMismatchError(
          f"checkpoint step {step} in {self.directory} holds the state of another optimiser than "
          f"train.optimizer of this config; resume with the optimiser it was trained with, or use "
          f"another --workdir.")

  def restore(self, step: int, target: dict) -> dict:
    """Restore `step` into the structure of `target` (concrete or abstract arrays)."""
    self.check_compatible(step, target)
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def state_equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
