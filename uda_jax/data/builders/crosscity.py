"""NTHU Cross-City (Chen et al., "No More Discrimination", ICCV 2017) as a TFDS dataset, one config per city."""

import tensorflow_datasets as tfds

from uda_jax.data.builders import pairs

LAYOUT = ("<manual_dir>/<City>/Images/Train/*.{jpg,png}, <manual_dir>/<City>/Images/Test/*.{jpg,png} and "
          "<manual_dir>/<City>/Labels/Test/<stem>_eval.png")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LABEL_SUFFIX = "_eval.png"
CITIES = ("Rome", "Rio", "Tokyo", "Taipei")


class Crosscity(pairs.SegmentationBuilder):
  """Cross-City: per city ~3,200 unlabelled 'train' images and 100 labelled 'test' images (13 classes).

  'train' examples carry a 1x1 label of 255 (no annotation exists; the pipeline never reads target-train
  labels). 'test' labels are stored as found in the *_eval.png files; see labels.CROSSCITY_ID_TO_TRAIN13 for
  what is and is not confirmed about their encoding.
  """

  name = "crosscity"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Unlabelled train and labelled test per city; raw *_eval.png values."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name=city.lower(), description=f"Cross-City {city}.") for city in CITIES
  ]
  HOMEPAGE = "https://yihsinchen.github.io/segmentation_adaptation_dataset/"
  # Read by public loaders as Cityscapes labelIds (0-33); 255 passes as the usual void value.
  VALID_IDS = pairs.CITYSCAPES_IDS + (255,)
  EXPECTED_SIZES = {"train": 3200, "test": 100}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Download the NTHU Cross-City dataset from its project page ({HOMEPAGE}) and extract it (the archive's
  top folder is usually NTHU_Datasets). For each city (Rome, Rio, Tokyo, Taipei) it holds

    <City>/Images/Train/<stem>.jpg (or .png)   unlabelled images
    <City>/Images/Test/<stem>.jpg (or .png)    100 evaluation images
    <City>/Labels/Test/<stem>_eval.png         their 8-bit single-channel labels

  Pass the folder that contains the city folders (or its parent) as manual_dir; one manual_dir serves all four
  configs (crosscity/rome, crosscity/rio, crosscity/tokyo, crosscity/taipei).
  """

  def _split_generators(self, dl_manager):
    city = self.builder_config.name.capitalize()
    required = (f"{city}/Images/Train", f"{city}/Images/Test", f"{city}/Labels/Test")
    root = pairs.manual_root(dl_manager, required, LAYOUT, wrappers=("NTHU_Datasets",)) / city
    train_dir, test_dir, label_dir = root / "Images" / "Train", root / "Images" / "Test", root / "Labels" / "Test"
    what = "*.jpg or *.png images"
    train = pairs.require_files(pairs.index_files(train_dir, IMAGE_SUFFIXES), train_dir, what, LAYOUT)
    test = pairs.require_files(pairs.index_files(test_dir, IMAGE_SUFFIXES), test_dir, what, LAYOUT)
    found, problems = pairs.match_pairs(test, pairs.index_files(label_dir, (LABEL_SUFFIX,)), test_dir, label_dir)
    return {
        "train": self._generate_examples(split="train", pairs=pairs.unlabelled(train)),
        "test": self._generate_examples(split="test", pairs=found, problems=problems),
    }
