"""Result tables in the papers' column order: markdown for reading, CSV for spreadsheets and scripts, JSON with
full precision; and a CSV history of the periodic evaluations of one run. Every file is written atomically."""

import csv
import io
import json
import os

from uda_jax import files
from uda_jax.data import labels


def _columns(summary: dict) -> list[tuple[str, float]]:
  """(header, value) of every column: the classes (papers' short names), mIoU, then the extra means."""
  cols = [(labels.short_name(name), v) for name, v in summary["per_class"].items()]
  return cols + [("mIoU", summary["mIoU"])] + list(summary.get("extra", {}).items())


def markdown_table(summary: dict, title: str = "") -> str:
  cols = _columns(summary)
  head = "| " + " | ".join(h for h, _ in cols) + " |"
  rule = "|" + "---|" * len(cols)
  row = "| " + " | ".join(f"{v:.1f}" for _, v in cols) + " |"
  return "\n".join(([f"**{title}**", ""] if title else []) + [head, rule, row]) + "\n"


def csv_table(summary: dict, step: int) -> str:
  cols = [("step", step)] + _columns(summary) + [("pixel_acc", summary["pixel_acc"])]
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow([h for h, _ in cols])
  writer.writerow([v if isinstance(v, int) else f"{v:.4f}" for _, v in cols])
  return out.getvalue()


def write_results(workdir: str, summary: dict, step: int, name: str = "eval") -> list[str]:
  """Writes <name>.md, <name>.csv and <name>.json into workdir; returns their paths."""
  texts = {"md": markdown_table(summary, f"{name} at step {step}"), "csv": csv_table(summary, step),
           "json": json.dumps({"step": step, **summary}, indent=2)}
  paths = []
  for ext, text in texts.items():
    paths.append(os.path.join(workdir, f"{name}.{ext}"))
    files.write_atomic(paths[-1], text)
  return paths


def append_history(workdir: str, summary: dict, step: int, name: str = "eval_history") -> str:
  """Adds one row to <name>.csv; rows of this step or later (left by a run that was killed and resumed
  from an earlier checkpoint) are replaced, so the file always reads as one run."""
  path = os.path.join(workdir, f"{name}.csv")
  header, row = csv_table(summary, step).splitlines()
  old = (files.read_text(path) or "").splitlines()
  rows = [r for r in old[1:] if int(r.split(",", 1)[0]) < step] if old and old[0] == header else []
  files.write_atomic(path, "\n".join([header, *rows, row]) + "\n")
  return path


def history_steps(workdir: str, name: str = "eval_history") -> set[int]:
  """Steps that have a row in <name>.csv."""
  lines = (files.read_text(os.path.join(workdir, f"{name}.csv")) or "").splitlines()
  return {int(r.split(",", 1)[0]) for r in lines[1:] if r.split(",", 1)[0].isdigit()}
