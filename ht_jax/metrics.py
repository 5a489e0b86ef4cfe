"""Metrics to `workdir/metrics.jsonl` (one JSON object per line) and TensorBoard event files."""

from __future__ import annotations

import json
import pathlib


class MetricWriter:

  def __init__(self, logdir: str | pathlib.Path, filename: str = "metrics.jsonl", enabled: bool = True):
    self.enabled = enabled
    self.path = pathlib.Path(logdir) / filename
    self._tb = None
    if enabled:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(str(pathlib.Path(logdir) / "tensorboard"))
      except ImportError:   # TensorBoard events are a convenience; the JSON lines are the record
        self._tb = None

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    with self.path.open("a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for name, value in scalars.items():
        self._tb.add_scalar(name, float(value), int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(path: str | pathlib.Path) -> list[dict]:
  path = pathlib.Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
