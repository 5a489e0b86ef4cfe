"""Where does the JAX training step spend its time? `python -m benchmarks.profile_step
[--config omniglot_1shot_v1] [--episodes 16] [--steps 10] [--top 25]`.

Traces `--steps` compiled steps with jax.profiler, reads the trace back (jax.profiler.ProfileData)
and sums the duration of every XLA operation (fusion, dot, convolution, copy...) across the
compute threads. It prints the time per part of the model (the `jax.named_scope`s of
ht_jax/model: shared_features, generator/transformer, cnn_query/conv, ...; forward and backward
apart), then the largest operations. The trace itself stays in benchmarks/results/profile/ for
TensorBoard or Perfetto.
"""

from __future__ import annotations

if __name__ == "__main__":   # first, before jax or torch loads: the command restarts with mimalloc
  from ht_jax.allocator import restart_with_mimalloc   # (ht_jax/allocator.py; HT_ALLOCATOR=system: off)
  restart_with_mimalloc()

import argparse
import collections
import pathlib
import re

from benchmarks import common


def op_times(trace_dir: pathlib.Path) -> tuple[collections.Counter, collections.Counter]:
  """Total nanoseconds per XLA op name, and per op category (the op name without its .N suffix)."""
  from jax.profiler import ProfileData
  path = sorted(trace_dir.rglob("*.xplane.pb"))[-1]
  data = ProfileData.from_file(str(path))
  by_op, by_kind = collections.Counter(), collections.Counter()
  for plane in data.planes:
    if not plane.name.startswith("/host:CPU") and not plane.name.startswith("/device:"):
      continue
    for line in plane.lines:
      if "XLA Ops" not in line.name and not line.name.startswith("tf_") and "Eigen" not in line.name \
          and "xla" not in line.name.lower():
        continue
      for event in line.events:
        if event.name.startswith("ThunkExecutor"):   # containers of the ops below, not ops
          continue
        by_op[event.name] += event.duration_ns
        by_kind[event.name.split(".")[0].removesuffix("_fusion")] += event.duration_ns
  return by_op, by_kind


def op_scopes(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> "model part (forward|backward)", from the op_name metadata that
  jax.named_scope writes, e.g. "jit(train_step)/transpose(jvp(vmap(cnn_query/conv)))/dot_general"
  -> "cnn_query/conv (backward)"; a nested jit's name (jit(_pad), jit(relu)) is dropped, so the
  padding and activations count to the scope that called them. Ops outside every scope (loss,
  optimiser) are "other"; ops without op_name metadata are ones XLA inserted itself, mostly
  layout transposes and copies (the feature extractors' kernel gradients take their operands
  transposed)."""
  scopes = {match.group(1): "XLA-inserted copies (no model scope)"
            for match in re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = (?![^\n]*op_name=)", hlo_text, re.MULTILINE)}
  for match in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\";]*)", hlo_text, re.MULTILINE):
    name, path = match.groups()
    path = path.removeprefix("jit(train_step)/")   # ops inlined from a nested jit may lack it
    direction = "backward" if "transpose(" in path else "forward"
    path = re.sub(r"jit\([\w.]*\)", "", path)      # nested jits: jit(one), jit(_pad), jit(relu)
    path = re.sub(r"\w+\(|\)", "", path)            # transforms: jvp(vmap(a))/b/op -> a/b/op
    parts = [p for p in path.split("/")[:-1] if p]
    scopes[name] = f"{'/'.join(parts[:2]) or 'other'} ({direction})"
  return scopes


def main():
  parser = argparse.ArgumentParser(description=common.cli_description(__doc__))
  parser.add_argument("--config", default="omniglot_1shot_v1", choices=common.CONFIGS)
  parser.add_argument("--episodes", type=int, default=16)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--top", type=int, default=25)
  args = parser.parse_args()
  import jax
  training = common.JaxTraining(common.load_config(args.config), args.episodes, batch_count=2)
  scopes = op_scopes(training.step.as_text())
  trace_dir = common.RESULTS / "profile" / f"{args.config}_b{args.episodes}"
  with jax.profiler.trace(str(trace_dir)):
    training.run_steps(args.steps)
  by_op, by_kind = op_times(trace_dir)
  total = sum(by_op.values()) or 1
  print(f"{args.config}, {args.episodes} episodes/step, {args.steps} steps: {total / 1e6:.0f} ms of XLA ops "
        f"({total / 1e6 / args.steps / args.episodes:.2f} ms per episode)")
  by_scope = collections.Counter()
  for name, ns in by_op.items():
    by_scope[scopes.get(name, "runtime (not an XLA op)")] += ns
  print("\n| model part | ms per episode | share |\n|---|---|---|")
  for name, ns in by_scope.most_common():
    print(f"| {name} | {ns / 1e6 / args.steps / args.episodes:.2f} | {100 * ns / total:.1f}% |")
  print("\n| op kind | share |\n|---|---|")
  for name, ns in by_kind.most_common(12):
    print(f"| {name} | {100 * ns / total:.1f}% |")
  print(f"\n| op | ms per step | share |\n|---|---|---|")
  for name, ns in by_op.most_common(args.top):
    print(f"| {name} ({scopes.get(name, '-')}) | {ns / 1e6 / args.steps:.2f} | {100 * ns / total:.1f}% |")


if __name__ == "__main__":
  main()
