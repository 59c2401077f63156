"""A method config's paper rows (its ROWS, see uda_jax/rows.py): list their commands, run them, collect ours.

  python -m uda_jax.tools.tables CONFIG [--table T] [--root ROOT]       the rows, published numbers, commands
  python -m uda_jax.tools.tables CONFIG [--table T] --run ROOT [--dry_run] [-- --config.k=v ...]
  python -m uda_jax.tools.tables CONFIG [--table T] --collect ROOT      ours beside the published numbers

Every stage works in ROOT/<stage slug> and logs to ROOT/<slug>.log; rows that share a stage share its run, and
--run runs it once. --run resumes: a train stage with eval_final.json, a predict stage whose predict.output_dir
holds manifest.json, an eval stage with a kept result are skipped; a killed training resumes from its
checkpoint. An eval stage writes eval_<checkpoint>_step<N>.json into the directory it ran in; --run copies it
to ROOT/<slug>/eval_final.json, so every row's result is read from one place. Overrides after `--` go to every
stage before the stage's own, which win (FADA: `-- --config.init_from=weights/resnet101_imagenet` starts src and
sd from ImageNet while adv keeps init_from={src}); they do not change the slugs: use another ROOT for another
setting. ROOT is a local folder.
"""

import argparse
import csv
import dataclasses
import glob
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys

from uda_jax.errors import UserError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Before TF loads (--collect writes through it): no chatter.
DEFAULT_ROOT = "runs/tables"
_KEY = re.compile(r"\{(\w+)\}")


@dataclasses.dataclass(frozen=True)
class Command:
  """One stage of one row with the paths filled in."""
  slug: str
  mode: str
  argv: tuple[str, ...]  # starts with 'python'; the runner swaps in sys.executable
  own_dir: str  # ROOT/<slug>: what '{key}' of this stage means
  done: str  # the file that exists once the stage has finished ('' = unknown: run it, it skips finished work)
  result: str  # the eval_final.json holding the stage's evaluation ('' for predict)


def load_rows(config_file: str) -> tuple:
  if not os.path.isfile(config_file):
    raise UserError(f"no config file {config_file}")
  sys.path.insert(0, os.path.dirname(os.path.abspath(config_file)))  # a config may import its sibling configs
  stem = os.path.splitext(os.path.basename(config_file))[0]
  spec = importlib.util.spec_from_file_location(f"uda_jax_tables_{stem}", config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  rows = getattr(module, "ROWS", None)
  if not rows:
    raise UserError(f"{config_file} lists no paper rows ({'ROWS is empty' if rows is not None else 'no ROWS'})")
  return tuple(rows)


def select(rows, table: str | None, config_file: str, match: str = "") -> list:
  picked = [r for r in rows if (table is None or r.table == table) and match in r.name]
  if not picked and match:
    raise UserError(f"no row of {config_file}{f' table {table}' if table else ''} has {match!r} in its name")
  if not picked:
    known = sorted({r.table for r in rows}, key=lambda t: (len(t), t))  # '10' after '9'
    raise UserError(f"unknown table {table!r} in {config_file}; known tables: {', '.join(known)}")
  return picked


def resolve(row, config_file: str, root: str, extra=()) -> list[Command]:
  """The row's stages as commands: '{key}' -> ROOT/<slug of the row's stage `key`>."""
  dirs = {s.key: os.path.join(root, s.slug) for s in row.stages}

  def sub(value, stage):
    def one(m):
      if m.group(1) not in dirs:
        raise UserError(f"row {row.table} {row.name!r}: stage {stage.key!r} names {m.group(0)}, which is not "
                        f"one of the row's stages ({', '.join(dirs)})")
      return dirs[m.group(1)]
    return _KEY.sub(one, value)

  commands = []
  for s in row.stages:
    overrides = {k: sub(v, s) for k, v in s.overrides}
    run_in = s.workdir
    if not run_in and s.mode != "train":  # predict / eval a checkpoint in place: the first other stage named
      named = [k for _, v in s.overrides for k in _KEY.findall(v) if k != s.key]
      run_in = "{%s}" % named[0] if named else ""
    own = dirs[s.key]
    workdir = sub(run_in, s) if run_in else own
    argv = ("python", "-m", "uda_jax.main", "--config", f"{config_file}:{s.presets}" if s.presets else config_file,
            "--workdir", workdir, "--mode", s.mode, *extra, *(f"--config.{k}={v}" for k, v in overrides.items()))
    if s.mode == "predict":
      out = overrides.get("predict.output_dir", "")
      result, done = "", os.path.join(out, "manifest.json") if out else ""
    else:
      result = done = os.path.join(workdir if s.mode == "train" else own, "eval_final.json")
    commands.append(Command(s.slug, s.mode, argv, own, done, result))
  return commands


def plan(config_file: str, rows, root: str, extra=()) -> list[tuple]:
  """(row, commands) of every row; one slug must mean one command, as rows that share it share its run."""
  planned, seen = [], {}
  for row in rows:
    planned.append((row, resolve(row, config_file, root, extra)))
    for c in planned[-1][1]:
      if seen.setdefault(c.slug, c.argv) != c.argv:
        raise UserError(f"stage {c.slug} means two commands:\n  {shlex.join(seen[c.slug])}\n  {shlex.join(c.argv)}"
                        "\ngive the stages different presets or plain overrides")
  return planned


def run_command(argv, log_path: str) -> int:
  """The default runner: the stage as a subprocess, its output appended to log_path."""
  os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
  config_dir = os.path.dirname(os.path.abspath(argv[argv.index("--config") + 1].split(":")[0]))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [config_dir, os.environ.get("PYTHONPATH")])))
  with open(log_path, "a") as log:  # sibling imports work in the stage as they did in load_rows
    return subprocess.run([sys.executable, *argv[1:]], stdout=log, stderr=subprocess.STDOUT, env=env,
                          check=False).returncode


def run_rows(config_file: str, rows, root: str, extra=(), runner=run_command, dry_run=False) -> None:
  """Runs the rows' stages in order, each shared stage once, skipping finished ones (a rerun resumes)."""
  ran = set()
  for row, commands in plan(config_file, rows, root, extra):
    for c in commands:
      if c.slug in ran:
        continue
      ran.add(c.slug)
      if c.done and os.path.exists(c.done):
        print(f"done: {c.slug}", flush=True)
        continue
      print(f"{'would run' if dry_run else 'run'}: {shlex.join(c.argv)}", flush=True)
      if dry_run:
        continue
      log = c.own_dir + ".log"
      if runner(list(c.argv), log) != 0:
        raise UserError(f"stage {c.slug} of table {row.table} row {row.name!r} failed; see {log}")
      if c.mode == "eval":
        _keep_eval_result(c)


def _keep_eval_result(c: Command) -> None:
  """Copies the newest eval_<checkpoint>_step<N>.json of the directory the eval ran in to its own directory."""
  from uda_jax import files  # pylint: disable=g-import-not-at-top  (TensorFlow: slow to import, only needed here)
  found = sorted(glob.glob(os.path.join(c.argv[c.argv.index("--workdir") + 1], "eval_*_step*.json")),
                 key=os.path.getmtime)
  if not found:
    raise UserError(f"stage {c.slug} wrote no eval_*_step*.json; see {c.own_dir}.log")
  with open(found[-1]) as f:
    files.write_atomic(c.result, f.read())


def collect(planned) -> list[list[str]]:
  """[table, row, metric, published, ours, difference] of every row; '-' where its run has no result yet."""
  records = []
  for row, commands in planned:
    ours = None
    if commands[-1].result and os.path.exists(commands[-1].result):
      with open(commands[-1].result) as f:
        summary = json.load(f)
      ours = summary.get(row.metric, summary.get("extra", {}).get(row.metric))
    ours = None if ours is None else round(ours, 1)  # the difference as the printed numbers read
    records.append([row.table, row.name, row.metric, f"{row.published:.1f}", "-" if ours is None else f"{ours:.1f}",
                    "-" if ours is None else f"{ours - row.published:+.1f}"])
  return records


HEADER = ["table", "row", "metric", "published", "ours", "difference"]


def markdown(records) -> str:
  return "\n".join("| " + " | ".join(r) + " |" for r in [HEADER, ["---"] * len(HEADER), *records]) + "\n"


def csv_text(records) -> str:
  out = io.StringIO()
  csv.writer(out, lineterminator="\n").writerows([HEADER, *records])
  return out.getvalue()


def write_tables(root: str, config_file: str, table: str | None, records) -> list[str]:
  from uda_jax import files  # pylint: disable=g-import-not-at-top
  stem = os.path.join(root, f"tables_{os.path.splitext(os.path.basename(config_file))[0]}"
                      + (f"_{table}" if table else ""))
  for ext, text in (("md", markdown(records)), ("csv", csv_text(records))):
    files.write_atomic(f"{stem}.{ext}", text)
  return [f"{stem}.md", f"{stem}.csv"]


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  extra = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  parser = argparse.ArgumentParser(prog="python -m uda_jax.tools.tables", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("config", help="a method config with ROWS, e.g. configs/adaptsegnet.py")
  parser.add_argument("--table", help="one table of the paper, e.g. 3 (default: all)")
  parser.add_argument("--match", default="", help="only rows whose name contains this, e.g. ResNet-101")
  parser.add_argument("--root", default=DEFAULT_ROOT, help="the runs' root shown in the listed commands")
  action = parser.add_mutually_exclusive_group()
  action.add_argument("--run", metavar="ROOT", help="run the rows' stages below ROOT, skipping finished ones")
  action.add_argument("--collect", metavar="ROOT", help="print ours beside the published numbers, write CSV/md")
  parser.add_argument("--dry_run", action="store_true", help="with --run: print the commands it would run")
  args = parser.parse_args(argv)
  if args.dry_run and not args.run:
    parser.error("--dry_run goes with --run ROOT")
  try:
    rows = select(load_rows(args.config), args.table, args.config, args.match)
    if args.run:
      run_rows(args.config, rows, args.run, extra, dry_run=args.dry_run)
    elif args.collect:
      records = collect(plan(args.config, rows, args.collect, extra))
      print(markdown(records), end="")
      print("wrote " + ", ".join(write_tables(args.collect, args.config, args.table, records)))
    else:
      for row, commands in plan(args.config, rows, args.root, extra):
        print(f"Table {row.table}  {row.name}  published {row.metric} {row.published:.1f}"
              + (f"  ({row.note})" if row.note else ""))
        print("".join(f"  {shlex.join(c.argv)}\n" for c in commands))
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
