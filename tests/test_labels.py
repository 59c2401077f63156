"""Label tables: every protocol's raw id -> train id map, class order and palettes."""

import numpy as np
import pytest

from uda_jax.data import labels

NAMES_16 = ("road", "sidewalk", "building", "wall", "fence", "pole", "light", "sign", "vegetation", "sky",
            "person", "rider", "car", "bus", "motorcycle", "bicycle")
NAMES_13 = ("road", "sidewalk", "building", "light", "sign", "vegetation", "sky", "person", "rider", "car",
            "bus", "motorcycle", "bicycle")


def apply(table_name: str, ids) -> np.ndarray:
  return labels.LABEL_MAPS[table_name][np.asarray(ids, np.uint8)]


def test_tables_are_256_entry_uint8():
  for name, table in labels.LABEL_MAPS.items():
    assert table.shape == (256,) and table.dtype == np.uint8, name
    assert table[labels.IGNORE] == labels.IGNORE, name  # the pipeline pads raw labels with IGNORE before mapping


@pytest.mark.parametrize("table_name, raw, train", [
    ("cityscapes_ids_to_19", [7, 8, 26, 33, 34, 0, 255, 22, 31], [0, 1, 13, 18, 255, 255, 255, 9, 16]),
    # SYNTHIA: road 3, wall 21, light 15, sky 1, bicycle 11, void 0, lanemarking 22, terrain 16 (not evaluated).
    ("synthia_ids_to_16", [3, 21, 15, 1, 11, 0, 22, 16, 255], [0, 3, 6, 9, 15, 255, 255, 255, 255]),
    ("synthia_ids_to_13", [3, 21, 5, 7, 15, 1, 11, 0], [0, 255, 255, 255, 3, 6, 12, 255]),
    # Cityscapes labelIds: road 7, wall 12, fence 13, pole 17, light 19, terrain 22, truck 27, bicycle 33.
    ("cityscapes_ids_to_16", [7, 12, 13, 17, 19, 22, 27, 33], [0, 3, 4, 5, 6, 255, 255, 15]),
    ("cityscapes_ids_to_13", [7, 12, 13, 17, 19, 22, 27, 33], [0, 255, 255, 255, 3, 255, 255, 12]),
    ("crosscity_ids_to_13", [7, 8, 11, 19, 20, 21, 23, 24, 25, 26, 28, 32, 33, 12, 255],
     list(range(13)) + [255, 255]),
])
def test_tables_map_per_pixel(table_name, raw, train):
  image = np.asarray(raw, np.uint8).reshape(1, -1)
  np.testing.assert_array_equal(apply(table_name, image), np.asarray(train, np.uint8).reshape(1, -1))


def test_16_class_maps_follow_the_papers_columns():
  assert labels.CLASS_NAMES_16 == NAMES_16
  synthia_names = {3: "road", 4: "sidewalk", 2: "building", 21: "wall", 5: "fence", 7: "pole", 15: "light",
                   9: "sign", 6: "vegetation", 1: "sky", 10: "person", 17: "rider", 8: "car", 19: "bus",
                   12: "motorcycle", 11: "bicycle"}
  for raw, name in synthia_names.items():
    assert NAMES_16[labels.SYNTHIA_ID_TO_TRAIN16[raw]] == name
  by_id = {label_id: name for name, label_id, _ in labels.CITYSCAPES19}
  for raw, train in labels.CITYSCAPES_ID_TO_TRAIN16.items():
    assert NAMES_16[train] == by_id[raw]


def test_13_classes_are_the_16_without_wall_fence_pole():
  assert labels.CLASS_NAMES_13 == NAMES_13
  assert tuple(NAMES_16[i] for i in labels.SUBSET_13_OF_16) == NAMES_13
  for map16, map13 in ((labels.SYNTHIA_ID_TO_TRAIN16, labels.SYNTHIA_ID_TO_TRAIN13),
                       (labels.CITYSCAPES_ID_TO_TRAIN16, labels.CITYSCAPES_ID_TO_TRAIN13)):
    derived = {raw: labels.SUBSET_13_OF_16.index(t) for raw, t in map16.items() if t in labels.SUBSET_13_OF_16}
    assert map13 == derived
  # Every raw id: the 13-class table equals the 16-class one restricted to the subset.
  for source in ("synthia", "cityscapes"):
    t16, t13 = labels.LABEL_MAPS[f"{source}_ids_to_16"], labels.LABEL_MAPS[f"{source}_ids_to_13"]
    for raw in range(256):
      expected = labels.SUBSET_13_OF_16.index(t16[raw]) if t16[raw] in labels.SUBSET_13_OF_16 else 255
      assert t13[raw] == expected, (source, raw)


def test_crosscity_source_and_target_tables_agree():
  # Cityscapes (source) and Cross-City (target, stored as labelIds) must land on the same 13 train ids.
  np.testing.assert_array_equal(labels.LABEL_MAPS["cityscapes_ids_to_13"],
                                labels.LABEL_MAPS["crosscity_ids_to_13"])


@pytest.mark.parametrize("name, count", [("cityscapes19", 19), ("synthia16", 16), ("synthia13", 13),
                                         ("crosscity13", 13)])
def test_class_sets(name, count):
  names, palette = labels.CLASS_SETS[name]
  assert len(names) == count and palette.shape == (count, 3) and palette.dtype == np.uint8
  colours = {n: c for n, _, c in labels.CITYSCAPES19}
  for class_name, colour in zip(names, palette):
    assert tuple(colour) == colours[class_name]
  assert labels.CLASS_SETS["crosscity13"][0] == NAMES_13


def test_colorize_16():
  _, palette = labels.CLASS_SETS["synthia16"]
  out = labels.colorize(np.array([[0, 15, 255]]), palette)
  np.testing.assert_array_equal(out[0], [[128, 64, 128], [119, 11, 32], [0, 0, 0]])
