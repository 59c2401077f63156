"""Cityscapes (Cordts et al., CVPR 2016) for UDA as a TFDS dataset: fine train/val frames with labelIds.

Named cityscapes_uda: TFDS ships its own `cityscapes` builder, which differs in features and layout.
"""

import tensorflow_datasets as tfds

from uda_jax.data.builders import pairs

LAYOUT = ("<manual_dir>/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png and "
          "<manual_dir>/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png")
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


class CityscapesUda(pairs.SegmentationBuilder):
  """Cityscapes fine annotations: 2,975 'train' and 500 'validation' 2048x1024 frames with 34-class labelIds.

  'train' is the UDA target set (its labels are kept for the Cityscapes -> Cross-City source side and for
  oracles); 'validation' is where the papers report mIoU. The test split has no public labels and is left out.
  """

  name = "cityscapes_uda"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "train and validation with raw gtFine labelIds."}
  HOMEPAGE = "https://www.cityscapes-dataset.com/"
  VALID_IDS = pairs.CITYSCAPES_IDS
  EXPECTED_SIZES = {"train": 2975, "validation": 500}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Register at {HOMEPAGE} and download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from its
  download page. Extract both into one folder, so that it holds

    leftImg8bit/train/<city>/<city>_<seq>_<frame>_leftImg8bit.png     (and leftImg8bit/val/...)
    gtFine/train/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png      (and gtFine/val/...)

  Pass that folder as manual_dir. Only the *_labelIds.png files are read (not color, instanceIds, trainIds).
  """

  def _split_generators(self, dl_manager):
    required = ("leftImg8bit/train", "leftImg8bit/val", "gtFine/train", "gtFine/val")
    root = pairs.manual_root(dl_manager, required, LAYOUT)
    splits = {}
    for split, folder in (("train", "train"), ("validation", "val")):
      image_dir, label_dir = root / "leftImg8bit" / folder, root / "gtFine" / folder
      images = pairs.require_files(
          pairs.index_files(image_dir, (IMAGE_SUFFIX,), "*/*"), image_dir, f"<city>/*{IMAGE_SUFFIX}", LAYOUT)
      labels = pairs.index_files(label_dir, (LABEL_SUFFIX,), "*/*")
      found, problems = pairs.match_pairs(images, labels, image_dir, label_dir)
      splits[split] = self._generate_examples(split=split, pairs=found, problems=problems)
    return splits
