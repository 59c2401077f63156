"""Label spaces and id -> train-id maps, as data.

A label map is a 256-entry uint8 lookup table: raw id stored on disk -> train id, 255 = ignore. Datasets keep
their raw ids on disk (Cityscapes labelIds for GTA5 / Synscapes / Cityscapes, SYNTHIA class ids, ...) and the
input pipeline applies the table of the evaluation protocol, so one prepared dataset serves every protocol.
"""

import numpy as np

IGNORE = 255

# Cityscapes' 19 evaluated classes in the papers' column order, with their labelIds and colours.
CITYSCAPES19 = (
    # name, labelId, RGB colour
    ("road", 7, (128, 64, 128)),
    ("sidewalk", 8, (244, 35, 232)),
    ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)),
    ("fence", 13, (190, 153, 153)),
    ("pole", 17, (153, 153, 153)),
    ("light", 19, (250, 170, 30)),
    ("sign", 20, (220, 220, 0)),
    ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)),
    ("sky", 23, (70, 130, 180)),
    ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)),
    ("car", 26, (0, 0, 142)),
    ("truck", 27, (0, 0, 70)),
    ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)),
    ("motorcycle", 32, (0, 0, 230)),
    ("bicycle", 33, (119, 11, 32)),
)

CLASS_NAMES_19 = tuple(name for name, _, _ in CITYSCAPES19)
PALETTE_19 = np.array([colour for _, _, colour in CITYSCAPES19], np.uint8)


def lookup_table(mapping: dict[int, int]) -> np.ndarray:
  """A 256-entry uint8 table from {raw id: train id}; every other id maps to IGNORE."""
  table = np.full(256, IGNORE, np.uint8)
  for raw, train in mapping.items():
    table[raw] = train
  return table


# Cityscapes labelIds (also GTA5's and Synscapes' label PNGs) -> 19 train ids.
CITYSCAPES_ID_TO_TRAIN19 = {label_id: i for i, (_, label_id, _) in enumerate(CITYSCAPES19)}

# SYNTHIA -> Cityscapes is evaluated on 16 classes (mIoU) and on 13 of them (mIoU*, no wall, fence, pole);
# columns in the papers' order. Cross-City annotates the same 13 classes in the same order.
CLASS_NAMES_16 = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "light", "sign", "vegetation", "sky", "person",
    "rider", "car", "bus", "motorcycle", "bicycle",
)
# Positions of the 13 classes inside the 16: mIoU* is the mean of the 16-class IoUs at these positions.
SUBSET_13_OF_16 = (0, 1, 2, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
CLASS_NAMES_13 = tuple(CLASS_NAMES_16[i] for i in SUBSET_13_OF_16)
PALETTE_16 = PALETTE_19[[CLASS_NAMES_19.index(name) for name in CLASS_NAMES_16]]
PALETTE_13 = PALETTE_16[list(SUBSET_13_OF_16)]

# SYNTHIA class ids (channel 0 of the 16-bit GT/LABELS PNGs; 0 = void, ids go up to 22) -> 16 / 13 train ids.
SYNTHIA_ID_TO_TRAIN16 = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 9, 10: 10, 17: 11, 8: 12, 19: 13, 12: 14, 11: 15,
}
SYNTHIA_ID_TO_TRAIN13 = {3: 0, 4: 1, 2: 2, 15: 3, 9: 4, 6: 5, 1: 6, 10: 7, 17: 8, 8: 9, 19: 10, 12: 11, 11: 12}

# Cityscapes labelIds -> the same 16 / 13 classes (target side of SYNTHIA -> Cityscapes; the 13 are also the
# source side of Cityscapes -> Cross-City).
CITYSCAPES_ID_TO_TRAIN16 = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 23: 9, 24: 10, 25: 11, 26: 12, 28: 13, 32: 14,
    33: 15,
}
CITYSCAPES_ID_TO_TRAIN13 = {
    7: 0, 8: 1, 11: 2, 19: 3, 20: 4, 21: 5, 23: 6, 24: 7, 25: 8, 26: 9, 28: 10, 32: 11, 33: 12,
}

# Cross-City (NTHU, Chen et al. ICCV 2017) Labels/Test/*_eval.png -> 13 train ids. The authors' own description
# of the encoding could not be found; independent public loaders read these files as single-channel 8-bit PNGs
# holding Cityscapes labelIds and map them with exactly this table. If the real files hold something else
# (e.g. 0-12 train ids), change this table only: the prepared dataset stores the raw values as they are.
CROSSCITY_ID_TO_TRAIN13 = {
    7: 0, 8: 1, 11: 2, 19: 3, 20: 4, 21: 5, 23: 6, 24: 7, 25: 8, 26: 9, 28: 10, 32: 11, 33: 12,
}

# Named tables the pipeline selects with `config.data.*_label_map`.
LABEL_MAPS = {
    "cityscapes_ids_to_19": lookup_table(CITYSCAPES_ID_TO_TRAIN19),
    "cityscapes_ids_to_16": lookup_table(CITYSCAPES_ID_TO_TRAIN16),
    "cityscapes_ids_to_13": lookup_table(CITYSCAPES_ID_TO_TRAIN13),
    "synthia_ids_to_16": lookup_table(SYNTHIA_ID_TO_TRAIN16),
    "synthia_ids_to_13": lookup_table(SYNTHIA_ID_TO_TRAIN13),
    "crosscity_ids_to_13": lookup_table(CROSSCITY_ID_TO_TRAIN13),
    "identity": np.arange(256, dtype=np.uint8),
}

# Named class sets the evaluator reports over: (class names, palette). synthia13 and crosscity13 hold the same
# classes; both names exist so a config says which protocol it follows.
CLASS_SETS = {
    "cityscapes19": (CLASS_NAMES_19, PALETTE_19),
    "synthia16": (CLASS_NAMES_16, PALETTE_16),
    "synthia13": (CLASS_NAMES_13, PALETTE_13),
    "crosscity13": (CLASS_NAMES_13, PALETTE_13),
}

# Means reported beside the mIoU of a class set: SYNTHIA papers give the 16-class mIoU and the 13-class mIoU*
# (here 'mIoU13') from the same confusion matrix.
EXTRA_MEANS = {"synthia16": {"mIoU13": SUBSET_13_OF_16}}

# Column headers of the papers' per-class tables.
SHORT_NAMES = {"vegetation": "veg", "motorcycle": "mbike", "bicycle": "bike"}


def short_name(name: str) -> str:
  return SHORT_NAMES.get(name, name)


def full_palette(palette: np.ndarray) -> np.ndarray:
  """uint8 [256, 3]: the class colours, then black for ignore and every unknown id."""
  full = np.zeros((256, 3), np.uint8)
  full[: len(palette)] = palette
  return full


def colorize(train_ids: np.ndarray, palette: np.ndarray = PALETTE_19) -> np.ndarray:
  """Train-id map [H, W] -> RGB uint8 [H, W, 3]; ignore and unknown ids are black."""
  return full_palette(palette)[np.asarray(train_ids, np.uint8)]
