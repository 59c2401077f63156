"""TFDS builder of the procedural toy domain pair (`toy.py`): `uda_toy/source` and `uda_toy/target`.

Generated locally, nothing to download. Split sizes come from `SPLIT_SIZES` when the dataset is prepared, so a
test can monkeypatch it to build a tiny copy in a temporary data_dir.
"""

import tensorflow_datasets as tfds

from uda_jax.data import toy

# {config name: {split: number of examples}}; read at preparation time.
SPLIT_SIZES = {domain: dict(sizes) for domain, sizes in toy.DEFAULT_SPLIT_SIZES.items()}
IMAGE_SIZE = toy.DEFAULT_SIZE


class UdaToy(tfds.core.GeneratorBasedBuilder):
  """Procedural street scenes: a flat synthetic source and a textured, noisy "real" target."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="source", description="Synthetic look: flat saturated colours."),
      tfds.core.BuilderConfig(name="target", description="Real look: texture, lighting, blur, noise."),
  ]

  def __init__(self, *, file_format=None, **kwargs):
    # Random access (array_record) is what the input pipeline reads; make it the default here too.
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.Image(shape=(None, None, 1)),  # Cityscapes labelIds, 0 = unlabeled.
            "name": tfds.features.Text(),
        }),
        disable_shuffling=True,  # Record i is example i: keeps the files easy to reason about.
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    sizes = SPLIT_SIZES[self.builder_config.name]
    return {split: self._generate_examples(split, sizes[split]) for split in toy.SPLITS}

  def _generate_examples(self, split, num_examples):
    domain = self.builder_config.name
    for index in range(num_examples):
      image, label = toy.generate(domain, split, index, IMAGE_SIZE)
      name = f"{domain}_{split}_{index:05d}"
      yield name, {"image": image, "label": label[..., None], "name": name}
