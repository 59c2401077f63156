"""Builds one of the project's TFDS datasets from manually downloaded files.

  python -m uda_jax.data.prepare NAME [--manual_dir DIR] [--data_dir DIR] [--skip_bad]

NAME is a builder name (gta5, synthia_rand_cityscapes, synscapes, cityscapes_uda, crosscity/rome,
uda_toy/source, ...); a name with configs but none given (crosscity) prepares every config. --manual_dir, the
folder holding the downloaded files, is needed by every dataset except the generated toy. Mistakes in the
input (missing folders, unpaired, unreadable or out-of-range files) end with one line naming the file and exit
code 2; --skip_bad skips bad pairs instead and lists them.
"""

import argparse
import importlib
import inspect
import os
import pkgutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Before TF loads: keep its start-up chatter out.

import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from uda_jax.data.builders import pairs  # pylint: disable=g-import-not-at-top
from uda_jax.errors import UserError  # pylint: disable=g-import-not-at-top

USAGE_ERROR = 2


def project_builders() -> dict[str, type]:
  """{name: builder class} of every TFDS builder defined in a module of uda_jax.data.builders."""
  package = importlib.import_module("uda_jax.data.builders")
  found = {}
  for info in pkgutil.iter_modules(package.__path__):
    try:
      module = importlib.import_module(f"{package.__name__}.{info.name}")
    except Exception as e:  # pylint: disable=broad-except
      _BROKEN[info.name] = e  # One broken module must not block the others; named if its dataset is asked for.
      continue
    for obj in vars(module).values():
      if (isinstance(obj, type) and issubclass(obj, tfds.core.DatasetBuilder)
          and obj.__module__ == module.__name__ and not inspect.isabstract(obj)):
        found[obj.name] = obj
  return found


_BROKEN: dict[str, Exception] = {}


def expand(name: str, builders: dict[str, type]) -> list[str]:
  """['crosscity/rome', ...] for a builder with configs named without one; [name] otherwise."""
  base, _, config = name.partition("/")
  if base not in builders:
    broken = "".join(f"; builders/{module}.py failed to import: {e!r}" for module, e in _BROKEN.items())
    raise pairs.BadInputError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(builders))}{broken}")
  known = [c.name for c in builders[base].BUILDER_CONFIGS]
  if config and config not in known:
    raise pairs.BadInputError(f"{base} has no config {config!r}; choose one of {', '.join(known)}")
  return [name] if config or not known else [f"{base}/{c}" for c in known]


def prepare(name: str, manual_dir: str | None = None, data_dir: str | None = None, skip_bad: bool = False):
  """Prepares one dataset (config) `name`; returns (builder, whether it was already prepared)."""
  builders = project_builders()
  names = expand(name, builders)
  if len(names) != 1:
    raise pairs.BadInputError(f"{name} has several configs; prepare one of {', '.join(names)}")
  base, _, config = names[0].partition("/")
  cls = builders[base]
  if cls.MANUAL_DOWNLOAD_INSTRUCTIONS and not manual_dir:
    raise pairs.BadInputError(f"{base} needs --manual_dir DIR, the folder holding its downloaded files "
                              "(see docs/datasets.md)")
  if manual_dir and not Path(manual_dir).is_dir():
    raise pairs.BadInputError(f"manual_dir {manual_dir} does not exist or is not a folder")
  if skip_bad and not issubclass(cls, pairs.SegmentationBuilder):
    raise pairs.BadInputError(f"{base} does not support --skip_bad")
  builder = cls(data_dir=data_dir, config=config or None, **({"skip_bad": True} if skip_bad else {}))
  reused = builder.is_prepared()  # TFDS then leaves the files as they are.
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False),
      file_format="array_record")
  return builder, reused


def report(builder, reused: bool = False) -> str:
  """What was written where, examples per split, and the pairs --skip_bad left out."""
  state = "already prepared at" if reused else "written to"
  lines = [f"{builder.info.full_name} {state} {builder.data_dir}"]
  expected = getattr(builder, "EXPECTED_SIZES", {})
  for split, info in builder.info.splits.items():
    note = ""
    if split in expected and info.num_examples != expected[split]:
      note = f" (the full dataset has {expected[split]:,})"
    lines.append(f"  {split}: {info.num_examples:,} examples{note}")
  for split, problems in getattr(builder, "skipped", {}).items():
    if problems:
      lines.append(f"  {split}: skipped {len(problems)} bad pairs:")
      lines.extend(f"    {problem}" for problem in problems)
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m uda_jax.data.prepare", description=__doc__.splitlines()[0])
  parser.add_argument("name", help="dataset, e.g. gta5, synthia_rand_cityscapes, crosscity/rome")
  parser.add_argument("--manual_dir", default=None, help="folder holding the downloaded, extracted files")
  parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: TFDS's, ~/tensorflow_datasets)")
  parser.add_argument("--skip_bad", action="store_true", help="skip and list bad pairs instead of stopping")
  args = parser.parse_args(argv)
  try:
    for name in expand(args.name, project_builders()):  # Reports each config as soon as it is done.
      builder, reused = prepare(name, args.manual_dir, args.data_dir, args.skip_bad)
      print(report(builder, reused), flush=True)
  except UserError as e:  # Input mistakes: one line, no traceback.
    print(f"error: {e}", file=sys.stderr)
    return USAGE_ERROR
  return 0


if __name__ == "__main__":
  sys.exit(main())
