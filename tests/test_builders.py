"""Dataset builders: fake trees in the real formats in, the same pixels and ids out, bad input named."""

import re
import shutil

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds
from PIL import Image

import fake_trees
from uda_jax.data import labels, prepare
from uda_jax.data.builders import cityscapes, crosscity, gta5, pairs, synscapes, synthia


def build(cls, manual_dir, data_dir, config=None, skip_bad=False):
  builder = cls(data_dir=str(data_dir), config=config, skip_bad=skip_bad)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir), try_download_gcs=False))
  return builder


def read_back(builder, split) -> dict:
  """{name: (image, label [H, W, 1])} in record order."""
  source = builder.as_data_source(split)
  out = {}
  for i in range(len(source)):
    example = source[i]
    name = example["name"].decode() if isinstance(example["name"], bytes) else example["name"]
    out[name] = (example["image"], example["label"])
  return out


def assert_same(builder, written: dict) -> dict:
  """Every split holds exactly the written pairs, in order, pixel for pixel; returns what was read."""
  assert set(builder.info.splits.keys()) == set(written)
  got_all = {}
  for split, items in written.items():
    got = got_all[split] = read_back(builder, split)
    assert list(got) == list(items), split
    for name, (image, ids) in items.items():
      got_image, got_label = got[name]
      assert got_image.dtype == np.uint8 and got_label.dtype == np.uint8
      np.testing.assert_array_equal(got_image, image, err_msg=name)
      if ids is None:
        np.testing.assert_array_equal(got_label, np.full((1, 1, 1), 255), err_msg=name)
      else:
        np.testing.assert_array_equal(got_label[..., 0], ids, err_msg=name)
  return got_all


def assert_mapped(got: dict, table_name: str, mapping: dict) -> None:
  """The pipeline's table lookup equals the dict mapping, pixel by pixel."""
  table = labels.LABEL_MAPS[table_name]
  for _, label in got.values():
    raw = label[..., 0]
    expected = np.vectorize(lambda v: mapping.get(int(v), 255))(raw)
    np.testing.assert_array_equal(table[raw], expected)


def test_gta5(tmp_path):
  written = fake_trees.gta5(tmp_path / "gta5")
  got = assert_same(build(gta5.Gta5, tmp_path / "gta5", tmp_path / "data"), written)
  assert_mapped(got["train"], "cityscapes_ids_to_19", labels.CITYSCAPES_ID_TO_TRAIN19)
  label = got["train"]["00001"][1][..., 0]
  assert (label[0, 0], label[0, 1]) == (7, 34)  # fake_trees puts the listed ids first.
  mapped = labels.LABEL_MAPS["cityscapes_ids_to_19"][label]
  assert (mapped[0, 0], mapped[0, 1], mapped[0, 2]) == (0, 255, 255)  # 7 -> road, 34 and 255 -> ignore.


def test_gta5_official_split_file_selects_frames(tmp_path):
  written = fake_trees.gta5(tmp_path / "gta5")
  scipy.io.savemat(tmp_path / "gta5" / "split.mat", {
      "trainIds": np.array([[2]]), "valIds": np.array([[1]]), "testIds": np.zeros((0, 1))})
  del written["train"]["00003"]  # Not listed: left out.
  assert_same(build(gta5.Gta5, tmp_path / "gta5", tmp_path / "data"), written)


def test_synthia_reads_channel_0_of_16_bit_labels(tmp_path):
  written = fake_trees.synthia(tmp_path / "synthia")
  label_file = tmp_path / "synthia" / "GT" / "LABELS" / "0000000.png"
  with Image.open(label_file) as image:  # The pitfall the builder avoids: PIL reads zeros here.
    assert not np.array_equal(np.asarray(image)[..., 0], written["train"]["0000000"][1])
  got = assert_same(build(synthia.SynthiaRandCityscapes, tmp_path / "synthia", tmp_path / "data"), written)
  assert_mapped(got["train"], "synthia_ids_to_16", labels.SYNTHIA_ID_TO_TRAIN16)
  assert_mapped(got["train"], "synthia_ids_to_13", labels.SYNTHIA_ID_TO_TRAIN13)
  label = got["train"]["0000000"][1][..., 0]
  assert tuple(label[0, :3]) == (3, 21, 15)
  assert tuple(labels.LABEL_MAPS["synthia_ids_to_16"][label[0, :3]]) == (0, 3, 6)  # road, wall, light
  assert tuple(labels.LABEL_MAPS["synthia_ids_to_13"][label[0, :3]]) == (0, 255, 3)


def test_synthia_accepts_the_archive_top_folder(tmp_path):
  written = fake_trees.synthia(tmp_path / "synthia" / "RAND_CITYSCAPES", n=2)
  assert_same(build(synthia.SynthiaRandCityscapes, tmp_path / "synthia", tmp_path / "data"), written)


def test_synscapes_in_numeric_order(tmp_path):
  written = fake_trees.synscapes(tmp_path / "synscapes")
  assert list(written["train"]) == ["1", "2", "10"]
  got = assert_same(build(synscapes.Synscapes, tmp_path / "synscapes", tmp_path / "data"), written)
  assert_mapped(got["train"], "cityscapes_ids_to_19", labels.CITYSCAPES_ID_TO_TRAIN19)


def test_cityscapes(tmp_path):
  written = fake_trees.cityscapes(tmp_path / "cityscapes")
  got = assert_same(build(cityscapes.CityscapesUda, tmp_path / "cityscapes", tmp_path / "data"), written)
  for table_name, mapping in (("cityscapes_ids_to_19", labels.CITYSCAPES_ID_TO_TRAIN19),
                              ("cityscapes_ids_to_16", labels.CITYSCAPES_ID_TO_TRAIN16),
                              ("cityscapes_ids_to_13", labels.CITYSCAPES_ID_TO_TRAIN13)):
    assert_mapped(got["validation"], table_name, mapping)
  label = got["validation"]["lindau_000000_000019_leftImg8bit"][1][..., 0]
  assert tuple(label[0, :4]) == (7, 8, 12, 13)  # road, sidewalk, wall, fence
  assert tuple(labels.LABEL_MAPS["cityscapes_ids_to_16"][label[0, :4]]) == (0, 1, 3, 4)
  assert tuple(labels.LABEL_MAPS["cityscapes_ids_to_13"][label[0, :4]]) == (0, 1, 255, 255)


def test_crosscity(tmp_path):
  written = fake_trees.crosscity(tmp_path / "NTHU_Datasets", "Rome")
  builder = build(crosscity.Crosscity, tmp_path, tmp_path / "data", config="rome")  # Parent of NTHU_Datasets.
  got = assert_same(builder, written)
  assert_mapped(got["test"], "crosscity_ids_to_13", labels.CROSSCITY_ID_TO_TRAIN13)
  # JPEG training images are stored byte for byte, not re-encoded.
  raw = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
  files = tmp_path / "NTHU_Datasets" / "Rome" / "Images" / "Train"
  assert raw[0]["image"] == (files / "pano_00009_0_0.jpg").read_bytes()


@pytest.mark.parametrize("mode", ["RGBA", "P", "L"])
def test_non_rgb_png_images_are_stored_as_rgb(tmp_path, mode):
  written = fake_trees.gta5(tmp_path / "gta5", n=1)
  image = written["train"]["00001"][0]
  if mode == "RGBA":
    other = Image.fromarray(np.concatenate([image, np.full(image.shape[:2] + (1,), 9, np.uint8)], -1), mode)
  else:  # A palette image must not come back as its indices, nor a grayscale one as one channel.
    other = Image.fromarray(image, "RGB").convert(mode)
    image = np.asarray(other.convert("RGB"))
  other.save(tmp_path / "gta5" / "images" / "00001.png")
  written["train"]["00001"] = (image, written["train"]["00001"][1])
  assert_same(build(gta5.Gta5, tmp_path / "gta5", tmp_path / "data"), written)


def _rewrite_label(path, ids):
  fake_trees.write_palette_png(path, np.asarray(ids, np.int64))


BAD_GTA5 = {
    # case: (damage(root), text the error must contain)
    "missing labels folder": (lambda r: shutil.rmtree(r / "labels"), "labels"),
    "image without label": (lambda r: (r / "labels" / "00002.png").unlink(), "images/00002.png"),
    "label without image": (lambda r: (r / "images" / "00003.png").unlink(), "labels/00003.png"),
    "label size differs": (lambda r: _rewrite_label(r / "labels" / "00002.png", np.full((6, 7), 7)),
                           "labels/00002.png: label size 7x6 differs"),
    "id out of range": (lambda r: _rewrite_label(r / "labels" / "00001.png", np.full((5, 7), 40)),
                        "labels/00001.png: label ids [40]"),
    "corrupt image": (lambda r: fake_trees.truncate(r / "images" / "00002.png"), "images/00002.png: corrupt"),
    "corrupt label": (lambda r: fake_trees.truncate(r / "labels" / "00003.png"), "labels/00003.png: corrupt"),
    "RGB label": (lambda r: fake_trees.write_rgb_png(r / "labels" / "00001.png", np.zeros((5, 7, 3), np.uint8)),
                  "labels/00001.png: label must be a single-channel 8-bit PNG"),
    "not a PNG": (lambda r: (r / "labels" / "00001.png").write_text("hello"), "labels/00001.png: not a PNG"),
    "listed frame missing": (
        lambda r: scipy.io.savemat(r / "split.mat", {"trainIds": [[1], [4]], "valIds": [[2]], "testIds": [[3]]}),
        "images/00004.png: listed in split.mat"),
    "empty images folder": (lambda r: [p.unlink() for p in (r / "images").iterdir()], "no *.png images"),
}


@pytest.mark.parametrize("case", list(BAD_GTA5))
def test_gta5_bad_input_names_the_file(tmp_path, case):
  fake_trees.gta5(tmp_path / "gta5")
  damage, text = BAD_GTA5[case]
  damage(tmp_path / "gta5")
  with pytest.raises(pairs.BadInputError, match=re.escape(text)):
    build(gta5.Gta5, tmp_path / "gta5", tmp_path / "data")


def test_missing_manual_dir(tmp_path):
  with pytest.raises(pairs.BadInputError, match=re.escape(f"manual_dir {tmp_path / 'nowhere'} does not exist")):
    build(gta5.Gta5, tmp_path / "nowhere", tmp_path / "data")


def _synthia_label(root, ids, rng=np.random.default_rng(1)):
  fake_trees.write_synthia_label(root / "GT" / "LABELS" / "0000001.png", np.asarray(ids, np.int64), rng)


@pytest.mark.parametrize("damage, text", [
    (lambda r: _synthia_label(r, np.full((5, 7), 23)), "LABELS/0000001.png: label ids [23]"),
    (lambda r: _synthia_label(r, np.full((5, 7), 300)), "LABELS/0000001.png: label ids [300]"),  # > 8 bits
    (lambda r: fake_trees.write_gray_png(r / "GT" / "LABELS" / "0000001.png", np.full((5, 7), 3)),
     "LABELS/0000001.png: label must be a 16-bit RGB PNG"),
])
def test_synthia_bad_labels(tmp_path, damage, text):
  fake_trees.synthia(tmp_path / "synthia", n=2)
  damage(tmp_path / "synthia")
  with pytest.raises(pairs.BadInputError, match=re.escape(text)):
    build(synthia.SynthiaRandCityscapes, tmp_path / "synthia", tmp_path / "data")


def test_cityscapes_missing_subfolder(tmp_path):
  fake_trees.cityscapes(tmp_path / "cityscapes")
  shutil.rmtree(tmp_path / "cityscapes" / "gtFine" / "val")
  with pytest.raises(pairs.BadInputError, match=re.escape("gtFine/val; expected")):
    build(cityscapes.CityscapesUda, tmp_path / "cityscapes", tmp_path / "data")


def test_crosscity_test_image_without_label(tmp_path):
  fake_trees.crosscity(tmp_path, "Rio")
  (tmp_path / "Rio" / "Labels" / "Test" / "pano_00010_3_0_eval.png").unlink()
  with pytest.raises(pairs.BadInputError, match=re.escape("Images/Test/pano_00010_3_0.png: image has no label")):
    build(crosscity.Crosscity, tmp_path, tmp_path / "data", config="rio")


def test_skip_bad_counts_and_skips(tmp_path):
  written = fake_trees.gta5(tmp_path / "gta5", n=5)
  _rewrite_label(tmp_path / "gta5" / "labels" / "00002.png", np.full((6, 7), 7))
  (tmp_path / "gta5" / "labels" / "00004.png").unlink()
  for name in ("00002", "00004"):
    del written["train"][name]
  builder = build(gta5.Gta5, tmp_path / "gta5", tmp_path / "data", skip_bad=True)
  assert_same(builder, written)
  skipped = sorted(str(p.path.relative_to(tmp_path / "gta5")) for p in builder.skipped["train"])
  assert skipped == ["images/00004.png", "labels/00002.png"]


def test_prepare_cli(tmp_path, capsys):
  fake_trees.gta5(tmp_path / "gta5")
  data_dir = str(tmp_path / "data")
  assert prepare.main(["gta5", "--manual_dir", str(tmp_path / "nowhere"), "--data_dir", data_dir]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: manual_dir") and "nowhere" in err and "\n" not in err

  assert prepare.main(["gta5", "--data_dir", data_dir]) == 2
  assert "gta5 needs --manual_dir" in capsys.readouterr().err

  assert prepare.main(["nope", "--manual_dir", str(tmp_path / "gta5"), "--data_dir", data_dir]) == 2
  assert "unknown dataset 'nope'" in capsys.readouterr().err

  (tmp_path / "gta5" / "labels" / "00002.png").unlink()
  assert prepare.main(["gta5", "--manual_dir", str(tmp_path / "gta5"), "--data_dir", data_dir]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: ") and "images/00002.png" in err[-1] and "--skip_bad" in err[-1]

  assert prepare.main(["gta5", "--manual_dir", str(tmp_path / "gta5"), "--data_dir", data_dir, "--skip_bad"]) == 0
  out = capsys.readouterr().out
  assert "train: 2 examples (the full dataset has 24,966)" in out
  assert "skipped 1 bad pairs" in out and "images/00002.png: image has no label" in out
