"""Imports official PyTorch checkpoints into our Flax segmenters and writes them as Orbax checkpoints.

  python -m uda_jax.tools.import_torch --arch deeplabv2_resnet101 \
      --input DeepLab_resnet_pretrained_init-f81d91e8.pth --output ckpt/deeplab_init

The output directory holds {'params', 'batch_stats'} of the segmenter (only what the file provides), and for a
FADA checkpoint with its discriminator (model_D) also {'discriminators': {'d_main': params}}; the trainer
merges it into its fresh states with `config.init_from` (`uda_jax.tools.init_from.load_states`: the
discriminator only where FADA's d_main state has the same shapes, i.e. disc.width = the file's ndf).
Archs: see ARCHS. Inputs: `.pth`/`.pt` (needs torch) or `.npz` (name -> array, no torch needed).
"""

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import sys
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from uda_jax.models.deeplab import DeepLabV2
from uda_jax.models.fcn8s import FCN8s
from uda_jax.models.vgg import DeepLabV2VGG16
from uda_jax.tools import torch_keys
from uda_jax.tools.torch_keys import Ctx, Dest, Skip

# Segmenter each arch imports into, with the official settings (overridable by keyword).
ARCHS = {
    # AdaptSegNet DeeplabMulti (Caffe layout, 2 of 4 ASPP branches summed as in the official code).
    "deeplabv2_resnet101": (DeepLabV2, dict(layout="caffe", multi_level=True, aspp_branches=2,
                                            bn=dict(mode="batch_stats", eps=1e-5))),
    # FADA (torchvision layout, FrozenBatchNorm2d without eps, ASPP_Classifier_V2 sums all 4 branches).
    "deeplabv2_resnet101_tv": (DeepLabV2, dict(layout="torchvision", multi_level=False, aspp_branches=4,
                                               bn=dict(mode="frozen", eps=0.0))),
    "deeplabv2_vgg16": (DeepLabV2VGG16, dict(aspp_branches=2)),
    "fcn8s_vgg16": (FCN8s, dict()),
}

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[^.]+$")


def make_model(arch: str, num_classes: int = 19, **overrides) -> nn.Module:
  if arch not in ARCHS:
    raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)}")
  cls, kwargs = ARCHS[arch]
  return cls(num_classes=num_classes, **{**kwargs, **overrides})


def target_shapes(model: nn.Module) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
  """Every variable of `model` by path, shapes only (nothing is computed)."""
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32)))
  return {tuple(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(v)[0]}


@dataclasses.dataclass
class ImportReport:
  arch: str
  source: str  # checkpoint family detected from the key names
  mapped: dict[str, str] = dataclasses.field(default_factory=dict)  # file key -> variable path
  unused: list[str] = dataclasses.field(default_factory=list)  # file keys the model has no place for
  unused_by_design: dict[str, str] = dataclasses.field(default_factory=dict)  # file key -> why
  ignored: list[str] = dataclasses.field(default_factory=list)  # bookkeeping (num_batches_tracked, non-tensors)
  missing: list[str] = dataclasses.field(default_factory=list)  # variable paths absent from the file
  notes: list[str] = dataclasses.field(default_factory=list)
  # train state name -> what was imported for it besides the segmenter (FADA's model_D -> 'd_main')
  discriminators: dict[str, str] = dataclasses.field(default_factory=dict)

  def format(self) -> str:
    lines = [f"arch {self.arch}, file looks like: {self.source}",
             f"  mapped {len(self.mapped)} keys, ignored {len(self.ignored)} bookkeeping entries"]
    lines += [f"  NOTE: {n}" for n in self.notes]
    if self.discriminators:
      lines += [f"  discriminators imported, init_from restores each into the train state of that name when the "
                f"shapes match ({len(self.discriminators)}):"]
      lines += [f"    {name}: {what}" for name, what in self.discriminators.items()]
    lines += [f"  unused by design ({len(self.unused_by_design)}):"]
    lines += [f"    {k}: {why}" for k, why in self.unused_by_design.items()]
    lines += [f"  unused ({len(self.unused)}):"] + [f"    {k}" for k in self.unused]
    lines += [f"  missing, keep their fresh init ({len(self.missing)}):"] + [f"    {p}" for p in self.missing]
    return "\n".join(lines)


def torch_shape(kind: str, shape: Sequence[int]) -> tuple[int, ...]:
  """The PyTorch shape a variable of `shape` comes from, for `Dest.kind`."""
  if kind == "conv":
    return (shape[3], shape[2], shape[0], shape[1])
  if kind == "conv_t":
    return (shape[2], shape[3], shape[0], shape[1])
  if kind == "linear_conv":
    return (shape[3], shape[2] * shape[0] * shape[1])
  return tuple(shape)


def convert(kind: str, a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
  if kind == "conv":
    return a.transpose(2, 3, 1, 0)
  if kind == "conv_t":
    return a.transpose(2, 3, 0, 1)
  if kind == "linear_conv":  # torch `.view(O, I, kh, kw)` of the Linear weight, then OIHW -> HWIO
    return a.reshape(shape[3], shape[2], shape[0], shape[1]).transpose(2, 3, 1, 0)
  return a


def plan_import(arch: str, shapes: Mapping[str, Sequence[int]], num_classes: int = 19, *,
                skip: Sequence[str] = (), **model_kwargs) -> tuple[dict[str, Dest], ImportReport]:
  """Maps file keys (given their shapes only) to variables: nothing is loaded or computed.

  Raises ValueError on a shape mismatch (naming the key and both shapes) or two keys for one variable.
  """
  plan, report, _ = _plan(arch, shapes, num_classes, skip, model_kwargs)
  return plan, report


def _plan(arch, shapes, num_classes, skip, model_kwargs):
  model = make_model(arch, num_classes, **model_kwargs)
  targets = target_shapes(model)
  names = {k: torch_keys.normalise(k) for k in shapes}
  source = torch_keys.DETECT[arch](list(names.values()))
  ctx = Ctx(source, num_classes, getattr(model, "aspp_branches", None), getattr(model, "multi_level", False))
  report = ImportReport(arch, source, notes=torch_keys.layout_notes(arch, list(names.values())))
  plan, taken, disc = {}, {}, {}
  for key, name in names.items():
    if any(name == s or name.startswith(s.rstrip(".") + ".") for s in skip):
      report.unused_by_design[key] = "skipped on request"
      continue
    r = torch_keys.RULES[arch](name, ctx, targets)
    if isinstance(r, Skip):
      if r.bookkeeping:
        report.ignored.append(key)
      else:
        report.unused_by_design[key] = r.reason
      continue
    if r is None:
      report.unused.append(key)
      continue
    if r.path[0] == torch_keys.DISCRIMINATORS:  # no model to compare with: checked as a whole below
      disc.setdefault(r.path[1], {})[key] = r
      continue
    want = torch_shape(r.kind, targets[r.path].shape)
    if tuple(shapes[key]) != want:
      raise ValueError(
          f"shape mismatch for {key!r}: the file has {tuple(shapes[key])}, the model expects {want} "
          f"(torch layout; variable {'/'.join(r.path)} {tuple(targets[r.path].shape)}). Check num_classes / "
          f"model settings, or leave the key out with skip=[...] (--skip).")
    if r.path in taken:
      raise ValueError(f"{key!r} and {taken[r.path]!r} both map to {'/'.join(r.path)}")
    taken[r.path] = key
    plan[key] = r
    report.mapped[key] = "/".join(r.path)
  report.missing = sorted("/".join(p) for p in targets if p not in taken)
  for state, dests in disc.items():
    report.discriminators[state] = _check_pixel_discriminator(dests, shapes, num_classes)
    plan.update(dests)
    report.mapped.update({k: "/".join(r.path) for k, r in dests.items()})
  return plan, report, targets


def _check_pixel_discriminator(dests: Mapping[str, Dest], shapes: Mapping[str, Sequence[int]],
                               num_classes: int) -> str:
  """Checks that the file's FADA PixelDiscriminator (model_D) is complete and consistent, as our
  PixelDiscriminator(classes_per_domain, width) has it: D.0 in -> ndf, D.2 ndf -> ndf // 2, cls1 / cls2
  ndf // 2 -> K (K = num_classes, or 1: the binary domain discriminator); all 3x3 with bias. Returns a
  description; raises ValueError naming the offending key."""
  by_path = {}
  for key, r in dests.items():
    sub = r.path[2:]  # (module, 'conv', leaf)
    if sub in by_path:
      raise ValueError(f"{key!r} and {by_path[sub]!r} both map to {'/'.join(r.path)}")
    by_path[sub] = key
  hint = "check --num-classes, or leave the discriminator out with --skip model_D"
  need = [(m, "conv", leaf) for m in torch_keys.FADA_D_MODULES.values() for leaf in ("kernel", "bias")]
  absent = [p for p in need if p not in by_path]
  if absent:
    have = ", ".join(sorted(by_path.values()))
    raise ValueError(f"FADA discriminator (model_D) is incomplete: the file has {have} but nothing for "
                     f"{', '.join('/'.join(p) for p in absent)}; leave it out with --skip model_D")
  key0 = by_path[("D_0", "conv", "kernel")]
  s0 = tuple(shapes[key0])
  if len(s0) != 4 or s0[2:] != (3, 3):
    raise ValueError(f"FADA discriminator: {key0!r} has shape {s0}, expected (ndf, in, 3, 3) (torch layout: "
                     f"PixelDiscriminator's first 3x3 conv); {hint}")
  ndf, cin = s0[:2]
  k = shapes[by_path[("cls1", "conv", "kernel")]]
  k = k[0] if len(k) == 4 and k[0] in (num_classes, 1) else num_classes
  want = {"D_0": (ndf, cin), "D_2": (ndf // 2, ndf), "cls1": (k, ndf // 2), "cls2": (k, ndf // 2)}
  for (mod, _, leaf), key in by_path.items():
    out, inp = want[mod]
    expected = (out, inp, 3, 3) if leaf == "kernel" else (out,)
    if tuple(shapes[key]) != expected:
      raise ValueError(
          f"FADA discriminator: {key!r} has shape {tuple(shapes[key])}, expected {expected} (torch layout) for "
          f"PixelDiscriminator(in {cin}, ndf {ndf}, {k} classes per domain) as its {key0!r} {s0} and "
          f"num_classes {num_classes} imply; {hint}")
  return f"FADA PixelDiscriminator, in {cin}, width (disc.width) {ndf}, {k} classes per domain (model_D)"


def import_state_dict(arch: str, state_dict: Mapping[str, np.ndarray], num_classes: int = 19, *,
                      skip: Sequence[str] = (), strict: bool = False,
                      **model_kwargs) -> tuple[dict[str, Any], ImportReport]:
  """Converts an official PyTorch state_dict (name -> array) into {'params', 'batch_stats'} of `arch`.

  Only the variables the file provides are returned (the report lists the `missing` ones, which
  `init_from` leaves at their fresh init). A FADA checkpoint's model_D comes back as
  {'discriminators': {'d_main': params of our PixelDiscriminator}}. `model_kwargs` override the arch's model
  settings (e.g. aspp_branches, multi_level, blocks). strict: raise if any key is unused or any variable missing.
  """
  state_dict = {k: np.asarray(v) for k, v in state_dict.items()}
  plan, report, targets = _plan(arch, {k: v.shape for k, v in state_dict.items()}, num_classes, skip,
                                model_kwargs)
  if strict and (report.unused or report.missing):
    raise ValueError(f"strict import failed:\n{report.format()}")
  variables = {"params": {}, "batch_stats": {}}
  for key, dest in plan.items():
    t = targets.get(dest.path)  # None for a discriminator: float32, shapes from the file (already checked)
    node = variables
    for p in dest.path[:-1]:
      node = node.setdefault(p, {})
    a = convert(dest.kind, state_dict[key], t.shape if t is not None else None)
    node[dest.path[-1]] = np.ascontiguousarray(a, dtype=t.dtype if t is not None else np.float32)
  return variables, report


def check_hash_prefix(path: str) -> None:
  """torch.hub convention: `name-<first hex digits of the SHA-256>.ext` must match the file's content."""
  m = _HASH_IN_NAME.search(os.path.basename(path))
  if not m:
    return
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  digest = h.hexdigest()
  if not digest.startswith(m.group(1)):
    raise ValueError(f"{path}: SHA-256 {digest[:len(m.group(1))]}... does not match the prefix "
                     f"'{m.group(1)}' in its name (corrupt or truncated download?); --no-hash-check if the name "
                     "merely looks like a hash")


def _flatten(obj: Mapping, prefix: str, out: dict, ignored: list) -> None:
  for k, v in obj.items():
    name = f"{prefix}{k}"
    if isinstance(v, np.ndarray) or type(v).__name__ in ("Tensor", "Parameter"):
      out[name] = _to_numpy(v)
    elif isinstance(v, Mapping) and not str(k).startswith("optim"):
      _flatten(v, name + ".", out, ignored)
    else:  # optimiser state, iteration counters, config...
      ignored.append(name)


def _to_numpy(t) -> np.ndarray:
  if isinstance(t, np.ndarray):
    return t
  t = t.detach().cpu()
  if t.is_floating_point() and t.element_size() < 4:
    t = t.float()  # fp16/bf16 checkpoints (numpy has no bf16); our variables are float32 anyway
  return t.numpy()


def _torch_load(path: str):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"reading {path} needs PyTorch: pip install -e '.[torch]' "
                      "(or convert the file to .npz elsewhere)") from e
  def not_a_checkpoint(e):
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    # torch's weights-only errors open with a paragraph of advice; the cause is the line after "error:"
    cause = next((lines[i + 1] for i, l in enumerate(lines[:-1]) if l.endswith("error:")), lines[0] if lines else "")
    return ValueError(f"{path} is not a PyTorch checkpoint ({type(e).__name__}: {cause})")
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    if "global" not in str(e):  # not a refused class but unreadable bytes
      raise not_a_checkpoint(e) from None
    # Old checkpoints may pickle more than tensors.
    logging.warning("%s: weights-only load failed (%s); retrying with full unpickling (trusted file only)",
                    path, str(e).splitlines()[0])
  except Exception as e:  # pylint: disable=broad-except  (garbage makes torch.load fail in many ways)
    raise not_a_checkpoint(e) from None
  try:
    return torch.load(path, map_location="cpu", weights_only=False)
  except Exception as e:  # pylint: disable=broad-except
    raise not_a_checkpoint(e) from None


def load_checkpoint_file(path: str, check_hash: bool = True) -> tuple[dict[str, np.ndarray], list[str]]:
  """Reads `.pth`/`.pt` (torch) or `.npz` into flat {dotted name: array}; also returns ignored entries.

  Wrappers are unpacked: {'state_dict' | 'model_state_dict': ...} (LSD-seg) and FADA's
  {'feature_extractor', 'classifier', 'model_D', optimiser states...} (nested names joined by '.').
  """
  if not os.path.isfile(path):
    raise ValueError(f"{path} does not exist (or is not a file)")
  if check_hash:
    check_hash_prefix(path)
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}, []
    except (OSError, ValueError) as e:
      raise ValueError(f"{path} is not a readable .npz file ({str(e).splitlines()[0]})") from None
  obj = _torch_load(path)
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path}: expected a state_dict (a mapping), got {type(obj).__name__}")
  ignored = []
  for wrapper in ("state_dict", "model_state_dict"):
    if isinstance(obj.get(wrapper), Mapping):
      ignored += [k for k in obj if k != wrapper]
      obj = obj[wrapper]
      break
  out = {}
  _flatten(obj, "", out, ignored)
  return out, ignored


def import_file(arch: str, path: str, num_classes: int = 19, *, check_hash: bool = True,
                **kwargs) -> tuple[dict[str, Any], ImportReport]:
  state_dict, ignored = load_checkpoint_file(path, check_hash)
  variables, report = import_state_dict(arch, state_dict, num_classes, **kwargs)
  report.ignored = ignored + report.ignored
  return variables, report


def save_variables(variables: Mapping[str, Any], output: str, report: ImportReport | None = None,
                   force: bool = False) -> None:
  """Writes an Orbax checkpoint to a temp dir next to `output`, then renames it into place.

  It holds 'params' and 'batch_stats' (the segmenter), and 'discriminators' ({state name: params}) when
  `variables` has any."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  output = os.path.abspath(output)
  if os.path.exists(output) and not force:
    raise FileExistsError(f"{output} exists (use --force to replace it)")
  parent, base = os.path.split(output)
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent, f".{base}.tmp-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    ckptr = ocp.StandardCheckpointer()
    tree = {"params": variables.get("params", {}), "batch_stats": variables.get("batch_stats", {})}
    if variables.get(torch_keys.DISCRIMINATORS):
      tree[torch_keys.DISCRIMINATORS] = variables[torch_keys.DISCRIMINATORS]
    ckptr.save(tmp, tree)
    ckptr.wait_until_finished()
    if report is not None:
      with open(os.path.join(tmp, "import_report.json"), "w") as f:
        json.dump(dataclasses.asdict(report), f, indent=1)
    old = None
    if os.path.exists(output):
      old = f"{tmp}.old"
      os.rename(output, old)
    os.rename(tmp, output)
    if old:
      shutil.rmtree(old)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m uda_jax.tools.import_torch", description=__doc__.split("\n")[0])
  ap.add_argument("--arch", required=True, choices=sorted(ARCHS))
  ap.add_argument("--input", required=True, help=".pth/.pt (torch) or .npz (name -> array)")
  ap.add_argument("--output", required=True, help="Orbax checkpoint directory to write (config.init_from)")
  ap.add_argument("--num-classes", type=int, default=19)
  ap.add_argument("--aspp-branches", type=int, help="override the arch's number of summed ASPP branches")
  ap.add_argument("--single-level", action="store_true", help="deeplabv2_resnet101 without the aux head")
  ap.add_argument("--skip", action="append", default=[], help="key prefix to leave out (repeatable)")
  ap.add_argument("--strict", action="store_true", help="fail on any unused key or missing variable")
  ap.add_argument("--no-hash-check", action="store_true")
  ap.add_argument("--force", action="store_true", help="replace an existing --output")
  args = ap.parse_args(argv)
  try:
    return _run(args)
  except (ValueError, ImportError, FileExistsError) as e:  # the user's file or flags: one message, exit 2
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2


def _run(args) -> int:
  # Everything a user can get wrong is checked before the (slow) import, so nothing is written then.
  if not os.path.isfile(args.input):
    raise ValueError(f"--input {args.input} does not exist (or is not a file)")
  if os.path.exists(args.output) and not args.force:
    raise FileExistsError(f"--output {os.path.abspath(args.output)} exists (use --force to replace it)")
  overrides = {}
  if args.aspp_branches is not None:
    overrides["aspp_branches"] = args.aspp_branches
  if args.single_level:
    overrides["multi_level"] = False
  variables, report = import_file(args.arch, args.input, args.num_classes, check_hash=not args.no_hash_check,
                                  skip=args.skip, strict=args.strict, **overrides)
  print(report.format())
  save_variables(variables, args.output, report, force=args.force)
  print(f"wrote {os.path.abspath(args.output)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
