"""GTA5 ("Playing for Data", Richter et al., ECCV 2016) as a TFDS dataset: frames with Cityscapes labelIds."""

import logging
from pathlib import Path

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from uda_jax.data.builders import pairs

LAYOUT = "<manual_dir>/images/NNNNN.png and <manual_dir>/labels/NNNNN.png (optionally <manual_dir>/split.mat)"
OFFICIAL_LISTS = ("trainIds", "valIds", "testIds")


def official_names(split_file: Path) -> set[str]:
  """File stems ('00001') of every frame in split.mat's train, val and test lists (read_mapping.zip)."""
  try:
    mat = scipy.io.loadmat(split_file)
  except Exception as e:  # scipy raises several types for a damaged file.
    raise pairs.BadInputError(f"{split_file}: unreadable MAT file ({e})") from None
  missing = [key for key in OFFICIAL_LISTS if key not in mat]
  if missing:
    raise pairs.BadInputError(f"{split_file}: has no {', '.join(missing)}; expected read_mapping.zip's split.mat")
  return {f"{int(i):05d}" for key in OFFICIAL_LISTS for i in np.ravel(mat[key])}


class Gta5(pairs.SegmentationBuilder):
  """GTA5: 24,966 synthetic frames (mostly 1914x1052) labelled with Cityscapes labelIds.

  Split 'train' holds every pair: the UDA papers train on the full set. The official train/val/test split
  (split.mat) partitions the same frames; when present it names the frames to expect, so a missing archive part
  is reported instead of silently giving a smaller dataset.
  """

  name = "gta5"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Full set as one 'train' split; raw Cityscapes labelIds."}
  HOMEPAGE = "https://download.visinf.tu-darmstadt.de/data/from_games/"
  # Cityscapes labelIds 0-33. 34 and 255 also pass: some public loaders map 34 to ignore, and every label table
  # maps both to ignore; whether the real files hold them was not verified.
  VALID_IDS = tuple(range(35)) + (255,)
  EXPECTED_SIZES = {"train": 24966}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Download GTA5 from the "Playing for Data: Ground Truth from Computer Games" page of TU Darmstadt's
  Visual Inference lab ({HOMEPAGE}): the ten image archives (01_images.zip ... 10_images.zip) and the ten
  label archives (01_labels.zip ... 10_labels.zip). Extract them all into one folder, so that it holds

    images/00001.png ... images/24966.png   RGB frames
    labels/00001.png ... labels/24966.png   palette PNGs whose pixel values are Cityscapes labelIds

  Optionally put split.mat from the page's read_mapping.zip next to them. Pass that folder as manual_dir.
  Public loaders report a few frames whose image and label sizes differ (15188, 20803-20834, 20858-20860);
  preparation stops on such a pair and names it, --skip_bad leaves them out.
  """

  def _split_generators(self, dl_manager):
    root = pairs.manual_root(dl_manager, ("images", "labels"), LAYOUT)
    image_dir, label_dir = root / "images", root / "labels"
    images = pairs.require_files(pairs.index_files(image_dir, (".png",)), image_dir, "*.png images", LAYOUT)
    labels = pairs.index_files(label_dir, (".png",))
    missing = []
    if (root / "split.mat").exists():
      listed = official_names(root / "split.mat")
      extra = (images.keys() | labels.keys()) - listed
      if extra:
        logging.warning("gta5: ignoring %d files not listed in split.mat", len(extra))
      images = {k: v for k, v in images.items() if k in listed}
      labels = {k: v for k, v in labels.items() if k in listed}
      missing = [pairs.BadPair(image_dir / f"{k}.png", "listed in split.mat but neither image nor label exists")
                 for k in sorted(listed - images.keys() - labels.keys())]
    found, problems = pairs.match_pairs(images, labels, image_dir, label_dir)
    return {"train": self._generate_examples(split="train", pairs=found, problems=missing + problems)}
