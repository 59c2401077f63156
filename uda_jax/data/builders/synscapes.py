"""Synscapes (Wrenninge and Unger, 2018) as a TFDS dataset: photorealistic frames with Cityscapes labelIds."""

import tensorflow_datasets as tfds

from uda_jax.data.builders import pairs

LAYOUT = "<manual_dir>/img/rgb/N.png and <manual_dir>/img/class/N.png (N = 1 ... 25000)"


class Synscapes(pairs.SegmentationBuilder):
  """Synscapes: 25,000 synthetic 1440x720 frames labelled with Cityscapes labelIds; one 'train' split."""

  name = "synscapes"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "One 'train' split of img/rgb with raw img/class labelIds."}
  HOMEPAGE = "https://synscapes.on.liu.se/"
  # Cityscapes labelIds; 255 passes because a -1 (license plate) written as uint8 would read as 255.
  VALID_IDS = pairs.CITYSCAPES_IDS + (255,)
  EXPECTED_SIZES = {"train": 25000}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Request Synscapes (7D Labs, now distributed by Linköping University: {HOMEPAGE}) and extract the archive.
  Its Synscapes folder holds

    img/rgb/1.png ... img/rgb/25000.png       1440x720 RGB frames
    img/class/1.png ... img/class/25000.png   8-bit PNGs of Cityscapes labelIds

  (img/rgb-2k, img/instance, img/depth and meta/ are not used). Pass that folder, or its parent, as manual_dir.
  """

  def _split_generators(self, dl_manager):
    root = pairs.manual_root(dl_manager, ("img/rgb", "img/class"), LAYOUT, wrappers=("Synscapes",))
    image_dir, label_dir = root / "img" / "rgb", root / "img" / "class"
    images = pairs.require_files(pairs.index_files(image_dir, (".png",)), image_dir, "*.png images", LAYOUT)
    found, problems = pairs.match_pairs(images, pairs.index_files(label_dir, (".png",)), image_dir, label_dir)
    return {"train": self._generate_examples(split="train", pairs=found, problems=problems)}
