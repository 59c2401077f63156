"""SYNTHIA-RAND-CITYSCAPES (Ros et al., CVPR 2016) as a TFDS dataset: frames with SYNTHIA class ids."""

import tensorflow_datasets as tfds

from uda_jax.data.builders import pairs

LAYOUT = "<manual_dir>/RGB/NNNNNNN.png and <manual_dir>/GT/LABELS/NNNNNNN.png (the RAND_CITYSCAPES folder)"


class SynthiaRandCityscapes(pairs.SegmentationBuilder):
  """SYNTHIA-RAND-CITYSCAPES: 9,400 synthetic 1280x760 frames; labels are SYNTHIA class ids 0-22.

  The GT/LABELS files are 16-bit 3-channel PNGs with the class id in channel 0 (the instance id in channel
  1). They are read with TF as 16-bit (PIL silently returns zeros for them) and stored as 8-bit class ids.
  """

  name = "synthia_rand_cityscapes"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "One 'train' split; raw SYNTHIA class ids from channel 0 of GT/LABELS."}
  HOMEPAGE = "http://synthia-dataset.net/"
  VALID_IDS = tuple(range(23))  # 0 = void, 1-22 the SYNTHIA classes.
  READ_LABEL = staticmethod(pairs.read_label_16bit_channel0)
  EXPECTED_SIZES = {"train": 9400}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Download SYNTHIA-RAND-CITYSCAPES (the "CVPR16" set compatible with Cityscapes) from the SYNTHIA dataset's
  download page ({HOMEPAGE}) and extract it. Its RAND_CITYSCAPES folder holds

    RGB/0000000.png ... RGB/0009399.png             RGB frames
    GT/LABELS/0000000.png ... GT/LABELS/0009399.png  16-bit PNGs, class id in channel 0

  Pass that folder (or the folder containing RAND_CITYSCAPES) as manual_dir. Do not convert the labels.
  """

  def _split_generators(self, dl_manager):
    root = pairs.manual_root(dl_manager, ("RGB", "GT/LABELS"), LAYOUT, wrappers=("RAND_CITYSCAPES",))
    image_dir, label_dir = root / "RGB", root / "GT" / "LABELS"
    images = pairs.require_files(pairs.index_files(image_dir, (".png",)), image_dir, "*.png images", LAYOUT)
    found, problems = pairs.match_pairs(images, pairs.index_files(label_dir, (".png",)), image_dir, label_dir)
    return {"train": self._generate_examples(split="train", pairs=found, problems=problems)}
