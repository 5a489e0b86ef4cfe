"""Training throughput against episodes per step, JAX beside torch: `python -m benchmarks.plot
[benchmarks/results/latest.json] [--out benchmarks/results/throughput.png]`.

One panel per config: each framework's median episodes/s with its repeats' range as error bars
(torch at the mode picked per row, the faster in one timed block each; dashed or dotted, its
other mode where it ran: one timed block, or one warm step where that was far slower), and the
run's head-to-head ratio in the title of its panel, the machine above them. benchmarks.run draws it
after every run.
"""

from __future__ import annotations

import argparse
import json
import pathlib

from benchmarks import common

COLORS = {"jax": "tab:blue", "torch": "tab:orange"}


def series(panel: list[dict], framework: str) -> tuple[list[int], list[float], list[float], list[float]]:
  """(episodes per step, median, min, max) of the framework's rows in a panel that were measured."""
  points = sorted((r["episodes_per_step"], r["episodes_per_s_median"], r["episodes_per_s_min"], r["episodes_per_s_max"])
                  for r in panel if r["framework"] == framework and r.get("episodes_per_s_median"))
  return tuple(map(list, zip(*points))) if points else ([], [], [], [])


def other_torch_modes(panel: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
  """torch's mode not picked for each row, where it ran, by mode: {mode: (episodes per step, rate)}.
  Its rate is one timed block, or one warm step where that was far slower (benchmarks.train); one
  block can read above the picked mode's median when the two are close."""
  points = {}
  for r in panel:
    if r["framework"] == "torch" and r.get("torch_mode"):
      other = "vmap" if r["torch_mode"] == "loop" else "loop"
      if r.get(f"{other}_episodes_per_s"):
        points.setdefault(other, []).append((r["episodes_per_step"], r[f"{other}_episodes_per_s"]))
  return {mode: tuple(map(list, zip(*sorted(p)))) for mode, p in sorted(points.items())}


def plot(result: dict, path: pathlib.Path):
  """Draws `result` (latest.json's contents) to `path`; returns the figure's axes, one per config."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = result["rows"]
  configs = [c for c in dict.fromkeys(r["config"] for r in rows if r["benchmark"] == "train")]
  if not configs:
    raise ValueError("the results hold no training rows to plot; run `python -m benchmarks.run` first.")
  fig, axes = plt.subplots(1, len(configs), figsize=(4.2 * len(configs), 4.6), dpi=120, squeeze=False)
  versus = result.get("head_to_head") or {}
  for ax, config in zip(axes[0], configs):
    panel = [r for r in rows if r["benchmark"] == "train" and r["config"] == config]
    for framework in ("jax", "torch"):
      b, median, low, high = series(panel, framework)
      if b:
        ax.errorbar(b, median, yerr=[[m - l for m, l in zip(median, low)], [h - m for m, h in zip(median, high)]],
                    marker="o", capsize=3, color=COLORS[framework],
                    label="ht_torch, mode picked (median)" if framework == "torch" else "ht_jax")
    for (mode, (b, rate)), style in zip(other_torch_modes(panel).items(), ("--", ":")):
      ax.plot(b, rate, ls=style, marker=".", color=COLORS["torch"], alpha=0.6, label=f"ht_torch, {mode} (other mode: one block)")
    title = config
    if versus.get("config") == config and "jax_over_torch" in versus:
      title += f"\nhead to head at {versus['episodes_per_step']}: {versus['jax_over_torch']['median']:.2f}x"
    ax.set_title(title, fontsize=9)
    ax.set_xscale("log", base=2)
    ticks = sorted({r["episodes_per_step"] for r in panel})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("episodes per step")
    ax.set_ylabel("training episodes/s (median, min-max)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    # Below the panel, where it cannot cover a point or an error bar.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
  if result.get("host"):             # the machine: rates differ between machines far more than between runs
    fig.suptitle(common.host_line(result["host"]), fontsize=9)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
  return list(axes[0])


def main():
  parser = argparse.ArgumentParser(description=common.cli_description(__doc__))
  parser.add_argument("results", nargs="?", default=str(common.RESULTS / "latest.json"))
  parser.add_argument("--out", default=str(common.RESULTS / "throughput.png"))
  args = parser.parse_args()
  source = pathlib.Path(args.results)
  if not source.exists():
    raise SystemExit(f"{source} does not exist; run `python -m benchmarks.run` first, or name a results file.")
  plot(json.loads(source.read_text()), pathlib.Path(args.out))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
