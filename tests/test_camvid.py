"""CamVid: both on-disk layouts in, the same pixels and raw ids out, the SegNet split, the 10-class tables."""

import re
import shutil

import numpy as np
import pytest

import fake_trees
from test_builders import assert_mapped, assert_same, build
from uda_jax.data import labels, prepare
from uda_jax.data.builders import camvid, pairs


def test_full_layout_standard_split(tmp_path):
  written = fake_trees.camvid_full(tmp_path / "CamVid")
  builder = build(camvid.Camvid, tmp_path, tmp_path / "data", config="full")  # parent of CamVid/
  got = assert_same(builder, written)  # frames land in their SegNet split by name
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == {"train": 4, "validation": 2, "test": 2}
  label = got["train"]["0001TP_008520"][1][..., 0]
  assert label.reshape(-1)[:32].tolist() == list(range(32))  # colour of row i of label_colors.txt -> id i
  for split in written:
    assert_mapped(got[split], "camvid_full_ids_to_16", labels.CAMVID_FULL_ID_TO_TRAIN16)
    assert_mapped(got[split], "camvid_full_ids_to_19", labels.CAMVID_FULL_ID_TO_TRAIN19)


def _write_lists(root, lists):
  for split, stems in lists.items():
    folder = "val" if split == "validation" else split
    (root / camvid.LIST_FILES[split]).write_text(
        "".join(f"/SegNet/CamVid/{folder}/{s}.png /SegNet/CamVid/{folder}annot/{s}.png\n" for s in stems))


def test_full_layout_follows_segnet_lists(tmp_path):
  written = fake_trees.camvid_full(tmp_path)
  moved = written["train"].pop("0006R0_f00930")
  del written["test"]["Seq05VD_f00000"]  # in no list: left out
  written["test"]["0006R0_f00930"] = moved
  _write_lists(tmp_path, {split: list(items) for split, items in written.items()})
  assert_same(build(camvid.Camvid, tmp_path, tmp_path / "data", config="full"), written)


def test_segnet_layout(tmp_path):
  written = fake_trees.camvid_segnet(tmp_path / "CamVid")
  got = assert_same(build(camvid.Camvid, tmp_path, tmp_path / "data", config="segnet"), written)
  assert got["train"]["0001TP_008520"][1][0, :4, 0].tolist() == [11, 0, 4, 10]
  for split in written:
    assert_mapped(got[split], "camvid_segnet_ids_to_16", labels.CAMVID_SEGNET_ID_TO_TRAIN16)
    assert_mapped(got[split], "camvid_segnet_ids_to_19", labels.CAMVID_SEGNET_ID_TO_TRAIN19)


def test_standard_split_sizes():
  # Every frame name of SegNet's lists (sequence, first / last frame, step): the rule gives 367 / 101 / 233.
  names = ([f"0001TP_{n:06d}" for n in range(6690, 10381, 30)] + [f"0006R0_f{n:05d}" for n in range(930, 3931, 30)]
           + [f"Seq05VD_f{n:05d}" for n in range(0, 5101, 30)] + [f"0016E5_{n:05d}" for n in range(7959, 8160, 2)]
           + [f"0016E5_{n:05d}" for n in [*range(390, 2401, 30), *range(4350, 7921, 30), *range(8190, 8641, 30)]])
  splits = [camvid.standard_split(name) for name in names]
  assert {s: splits.count(s) for s in set(splits)} == {"train": 367, "validation": 101, "test": 233}
  assert camvid.standard_split("0016E5_00901") == "train" and camvid.standard_split("0042XX_00001") is None


# Hand-written: (raw ids, 16-class ids, 19-class ids).
SEGNET_IDS = ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 255],  # Sky ... Pedestrian, Bicyclist, void
              [9, 2, 5, 0, 1, 8, 7, 4, 12, 10, 255, 255, 255],
              [10, 2, 5, 0, 1, 8, 7, 4, 13, 11, 255, 255, 255])
FULL_IDS = (
    # Car SUV Truck_Bus Train Sidewalk RoadShoulder ParkingBlock LaneMkgsDriv Road Tree VegetationMisc Wall Bridge
    [5, 22, 27, 25, 19, 18, 15, 10, 17, 26, 29, 31, 3,
     # Column_Pole TrafficCone SignSymbol TrafficLight Misc_Text Pedestrian Child Animal Sky Fence
     8, 23, 20, 24, 12, 16, 7, 0, 21, 9,
     # Bicyclist MotorcycleScooter Void, 255
     2, 13, 30, 255],
    [12, 12, 12, 12, 1, 1, 1, 0, 0, 8, 8, 2, 2, 5, 5, 7, 7, 7, 10, 10, 10, 9, 4, 255, 255, 255, 255],
    [13, 13, 13, 13, 1, 1, 1, 0, 0, 8, 8, 2, 2, 5, 5, 7, 7, 7, 11, 11, 11, 10, 4, 255, 255, 255, 255],
)


@pytest.mark.parametrize("layout, ids", [("segnet", SEGNET_IDS), ("full", FULL_IDS)])
def test_tables_map_exact_ids(layout, ids):
  raw, train16, train19 = (np.asarray(i, np.uint8) for i in ids)
  np.testing.assert_array_equal(labels.LABEL_MAPS[f"camvid_{layout}_ids_to_16"][raw], train16)
  np.testing.assert_array_equal(labels.LABEL_MAPS[f"camvid_{layout}_ids_to_19"][raw], train19)


def test_ten_common_classes():
  ten = ("road", "sidewalk", "building", "fence", "pole", "sign", "vegetation", "sky", "person", "car")
  assert labels.CLASS_NAMES_10 == ten
  assert labels.SUBSET_10_OF_16 == (0, 1, 2, 4, 5, 7, 8, 9, 10, 12)
  assert labels.SUBSET_10_OF_19 == (0, 1, 2, 4, 5, 7, 8, 10, 11, 13)
  assert tuple(labels.CLASS_NAMES_19[i] for i in labels.SUBSET_10_OF_19) == ten
  for name, subset in (("16", labels.SUBSET_10_OF_16), ("19", labels.SUBSET_10_OF_19)):
    for layout in ("full", "segnet"):  # every CamVid id lands on one of the 10 or on ignore
      assert set(labels.LABEL_MAPS[f"camvid_{layout}_ids_to_{name}"].tolist()) == set(subset) | {255}


def _label(stem):
  return f"LabeledApproved_full/{stem}_L.png"


BAD_FULL = {
    # case: (damage(root), text the one-line error must contain)
    "image without label": (lambda r: (r / _label("0006R0_f00930")).unlink(),
                            "701_StillsRaw_full/0006R0_f00930.png: image has no label"),
    "label without image": (lambda r: (r / "701_StillsRaw_full" / "Seq05VD_f00000.png").unlink(),
                            f"{_label('Seq05VD_f00000')}: label has no image"),
    "unknown colour": (lambda r: fake_trees.write_rgb_png(r / _label("0016E5_07959"), np.full((5, 7, 3), 7, np.uint8)),
                       f"{_label('0016E5_07959')}: colour (7, 7, 7) at row 0, column 0 is not in CamVid's"),
    "label size differs": (lambda r: fake_trees.write_camvid_colour_label(r / _label("0001TP_008550"),
                                                                          np.zeros((7, 5), np.int64)),
                           f"{_label('0001TP_008550')}: label size 5x7 differs from image 0001TP_008550.png size 7x5"),
    "grayscale label": (lambda r: fake_trees.write_gray_png(r / _label("0001TP_008520"), np.zeros((5, 7))),
                        f"{_label('0001TP_008520')}: label must be an 8-bit RGB PNG"),
    "corrupt label": (lambda r: fake_trees.truncate(r / _label("0016E5_07920")), f"{_label('0016E5_07920')}: corrupt"),
    "name fits no sequence": (lambda r: shutil.copy(r / "701_StillsRaw_full" / "0001TP_008520.png",
                                                    r / "701_StillsRaw_full" / "frame1.png"),
                              "701_StillsRaw_full/frame1.png: name fits no CamVid sequence"),
    "listed frame missing": (lambda r: _write_lists(r, {"train": ["0006R0_f99999"], "validation": [], "test": []}),
                             "701_StillsRaw_full/0006R0_f99999.png: listed in train.txt"),
    "one list only": (lambda r: _write_lists(r, {"train": ["0006R0_f00930"]}), "val.txt"),
    "missing labels folder": (lambda r: shutil.rmtree(r / "LabeledApproved_full"), "LabeledApproved_full; expected"),
}


def _one_line_error(builder_args, text):
  with pytest.raises(pairs.BadInputError, match=re.escape(text)) as error:
    build(*builder_args)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("case", list(BAD_FULL))
def test_full_bad_input_names_the_file(tmp_path, case):
  fake_trees.camvid_full(tmp_path / "camvid")
  damage, text = BAD_FULL[case]
  damage(tmp_path / "camvid")
  _one_line_error((camvid.Camvid, tmp_path / "camvid", tmp_path / "data", "full"), text)


@pytest.mark.parametrize("damage, text", [
    (lambda r: fake_trees.write_gray_png(r / "valannot" / "0016E5_08159.png", np.full((5, 7), 12)),
     "valannot/0016E5_08159.png: label ids [12] outside the dataset's ids 0-11"),
    (lambda r: (r / "testannot" / "Seq05VD_f00000.png").unlink(), "test/Seq05VD_f00000.png: image has no label"),
    (lambda r: shutil.rmtree(r / "trainannot"), "trainannot; expected"),
])
def test_segnet_bad_input_names_the_file(tmp_path, damage, text):
  fake_trees.camvid_segnet(tmp_path / "camvid")
  damage(tmp_path / "camvid")
  _one_line_error((camvid.Camvid, tmp_path / "camvid", tmp_path / "data", "segnet"), text)


def test_skip_bad_leaves_out_unknown_colours(tmp_path):
  written = fake_trees.camvid_full(tmp_path)
  fake_trees.write_rgb_png(tmp_path / _label("0016E5_08159"), np.full((5, 7, 3), 7, np.uint8))
  del written["validation"]["0016E5_08159"]
  builder = build(camvid.Camvid, tmp_path, tmp_path / "data", config="full", skip_bad=True)
  assert_same(builder, written)
  assert [p.path.name for p in builder.skipped["validation"]] == ["0016E5_08159_L.png"]


def test_prepare_cli(tmp_path, capsys):
  fake_trees.camvid_segnet(tmp_path / "segnet")
  data_dir = str(tmp_path / "data")
  assert prepare.main(["camvid/full", "--manual_dir", str(tmp_path / "segnet"), "--data_dir", data_dir]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: missing") and "701_StillsRaw_full" in err and "\n" not in err
  assert prepare.main(["camvid/segnet", "--manual_dir", str(tmp_path / "segnet"), "--data_dir", data_dir]) == 0
  out = capsys.readouterr().out
  assert "train: 4 examples (the full dataset has 367)" in out and "test: 2 examples" in out
