"""`python -m parity_tests.report [--json PATH] [--out PATH]`: every parity measurement, for every
configuration, both directions of conversion and both precisions, as a markdown table (printed,
and written to --out) and as JSON rows [{"config", "quantity", "max_abs", "max_rel", "tolerance",
"ok"}, ...]. Exits non-zero if any row is outside its tolerance."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from tqdm import tqdm

from parity_tests.measure import CONFIGS, TORCH_INITIALISED, measure

SUMMARY_COLUMNS = ["generated weights", "support activations", "query logits", "loss", "gradients", "SGD step",
                   "Adam step"]


def collect() -> list[dict]:
  runs = [(name, "jax") for name in CONFIGS] + [(name, "torch") for name in TORCH_INITIALISED]
  rows = []
  for name, direction in tqdm(runs, desc="parity", unit="config"):
    rows.extend(measure(name, direction))
  return rows


def summary_table(rows: list[dict]) -> str:
  """One line per configuration: the worst max_rel of each quantity, float32 / float64."""
  by_key = {(r["config"], r["quantity"]): r for r in rows}
  configs = list(dict.fromkeys(r["config"] for r in rows))
  lines = ["| configuration | " + " | ".join(SUMMARY_COLUMNS) + " | round trip | all within tolerance |",
           "|---" * (len(SUMMARY_COLUMNS) + 3) + "|"]
  for config in configs:
    cells = []
    for quantity in SUMMARY_COLUMNS:
      values = [by_key.get((config, f"{quantity} ({p})")) for p in ("float32", "float64")]
      cells.append(" / ".join("-" if v is None else f"{v['max_rel']:.0e}" for v in values))
    trip = by_key.get((config, "JAX -> torch -> JAX"))
    ok = all(r["ok"] for r in rows if r["config"] == config)
    lines.append(f"| {config} | " + " | ".join(cells) + f" | {'-' if trip is None else 'exact' if trip['max_abs'] == 0 else trip['max_abs']} | {'yes' if ok else 'NO'} |")
  return "\n".join(lines)


def full_table(rows: list[dict]) -> str:
  lines = ["| configuration | quantity | max abs | max rel | tolerance | ok |", "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['config']} | {r['quantity']} | {r['max_abs']:.2e} | {r['max_rel']:.2e} | {r['tolerance']:g} | "
                 f"{'yes' if r['ok'] else 'NO'} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--json", type=pathlib.Path, help="write the rows as JSON here")
  parser.add_argument("--out", type=pathlib.Path, help="write the markdown here")
  args = parser.parse_args(argv)
  rows = collect()
  markdown = ("Worst relative error per quantity, float32 / float64 (tolerances in the full table):\n\n"
              + summary_table(rows) + "\n\n" + full_table(rows) + "\n")
  print(markdown)
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown)
  if args.json:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))
  failed = [r for r in rows if not r["ok"]]
  if failed:
    print(f"{len(failed)} of {len(rows)} rows are outside their tolerance.", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
