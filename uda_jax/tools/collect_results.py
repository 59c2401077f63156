"""Mean and spread of final target mIoU over runs: python -m uda_jax.tools.collect_results ROOT.

Expects ROOT/<variant>/seed<k>/eval_final.json as launch/toy_table.sh writes them; prints a markdown table.
"""

import glob
import json
import os
import sys

import numpy as np


def collect(root: str) -> dict[str, list[float]]:
  runs = {}
  for path in sorted(glob.glob(os.path.join(root, "*", "seed*", "eval_final.json"))):
    variant = os.path.basename(os.path.dirname(os.path.dirname(path)))
    with open(path) as f:
      runs.setdefault(variant, []).append(json.load(f)["mIoU"])
  return runs


def table(runs: dict[str, list[float]]) -> str:
  lines = ["| variant | target mIoU (mean +- std) | runs |", "|---|---|---|"]
  for variant, values in runs.items():
    v = np.asarray(values)
    lines.append(f"| {variant} | {v.mean():.1f} +- {v.std():.1f} | {', '.join(f'{x:.1f}' for x in v)} |")
  return "\n".join(lines)


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit("usage: python -m uda_jax.tools.collect_results ROOT")
  print(table(collect(sys.argv[1])))
