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

# CamVid (Brostow et al., 2009), evaluated in LSD-seg's Table 5 on "the 10 common classes" of SYNTHIA, Cityscapes
# and CamVid with a 16- or 19-class model. Two label spaces exist on disk (builders/camvid.py stores both raw):
# the original release's 32 colours (label_colors.txt; raw id = row in this table, Void included as 30) and
# SegNet's 11 grouped classes (raw ids 0-10, 11 = void).
CAMVID32 = (
    ("Animal", (64, 128, 64)), ("Archway", (192, 0, 128)), ("Bicyclist", (0, 128, 192)),
    ("Bridge", (0, 128, 64)), ("Building", (128, 0, 0)), ("Car", (64, 0, 128)),
    ("CartLuggagePram", (64, 0, 192)), ("Child", (192, 128, 64)), ("Column_Pole", (192, 192, 128)),
    ("Fence", (64, 64, 128)), ("LaneMkgsDriv", (128, 0, 192)), ("LaneMkgsNonDriv", (192, 0, 64)),
    ("Misc_Text", (128, 128, 64)), ("MotorcycleScooter", (192, 0, 192)), ("OtherMoving", (128, 64, 64)),
    ("ParkingBlock", (64, 192, 128)), ("Pedestrian", (64, 64, 0)), ("Road", (128, 64, 128)),
    ("RoadShoulder", (128, 128, 192)), ("Sidewalk", (0, 0, 192)), ("SignSymbol", (192, 128, 128)),
    ("Sky", (128, 128, 128)), ("SUVPickupTruck", (64, 128, 192)), ("TrafficCone", (0, 0, 64)),
    ("TrafficLight", (0, 64, 64)), ("Train", (192, 64, 128)), ("Tree", (128, 128, 0)),
    ("Truck_Bus", (192, 128, 192)), ("Tunnel", (64, 0, 64)), ("VegetationMisc", (192, 192, 0)),
    ("Void", (0, 0, 0)), ("Wall", (64, 192, 0)),
)
CAMVID_SEGNET11 = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
                   "Bicyclist")  # raw ids 0-10; 11 = void
# How the 32 classes group into SegNet's 11 (the grouping public descriptions of SegNet's CamVid give, e.g.
# MATLAB's SegNet example). The 32-class tables fold through it, so both layouts yield the same ground truth;
# Void and the classes not listed are ignored.
CAMVID32_TO_SEGNET11 = {
    "Sky": "Sky", "Bridge": "Building", "Building": "Building", "Wall": "Building", "Tunnel": "Building",
    "Archway": "Building", "Column_Pole": "Pole", "TrafficCone": "Pole", "Road": "Road", "LaneMkgsDriv": "Road",
    "LaneMkgsNonDriv": "Road", "Sidewalk": "Pavement", "ParkingBlock": "Pavement", "RoadShoulder": "Pavement",
    "Tree": "Tree", "VegetationMisc": "Tree", "SignSymbol": "SignSymbol", "Misc_Text": "SignSymbol",
    "TrafficLight": "SignSymbol", "Fence": "Fence", "Car": "Car", "SUVPickupTruck": "Car", "Truck_Bus": "Car",
    "Train": "Car", "OtherMoving": "Car", "Pedestrian": "Pedestrian", "Child": "Pedestrian",
    "CartLuggagePram": "Pedestrian", "Animal": "Pedestrian", "Bicyclist": "Bicyclist",
    "MotorcycleScooter": "Bicyclist",
}
# The 10 common classes: SegNet's 11 without Bicyclist (SYNTHIA and Cityscapes split it into rider + bicycle).
CAMVID_SEGNET_TO_COMMON = {
    "Sky": "sky", "Building": "building", "Pole": "pole", "Road": "road", "Pavement": "sidewalk",
    "Tree": "vegetation", "SignSymbol": "sign", "Fence": "fence", "Car": "car", "Pedestrian": "person",
}
# Positions of the 10 inside the 16- and 19-class sets, for eval.class_subset.
SUBSET_10_OF_16 = tuple(i for i, name in enumerate(CLASS_NAMES_16) if name in CAMVID_SEGNET_TO_COMMON.values())
SUBSET_10_OF_19 = tuple(i for i, name in enumerate(CLASS_NAMES_19) if name in CAMVID_SEGNET_TO_COMMON.values())
CLASS_NAMES_10 = tuple(CLASS_NAMES_16[i] for i in SUBSET_10_OF_16)


def _common_table(segnet_names, classes: tuple[str, ...]) -> dict[int, int]:
  """{raw id: index in `classes`} for the raw ids whose SegNet class (segnet_names[raw]) is one of the 10."""
  common = [CAMVID_SEGNET_TO_COMMON.get(name) for name in segnet_names]
  return {raw: classes.index(name) for raw, name in enumerate(common) if name}


_FULL_AS_SEGNET = [CAMVID32_TO_SEGNET11.get(name) for name, _ in CAMVID32]
CAMVID_FULL_ID_TO_TRAIN16 = _common_table(_FULL_AS_SEGNET, CLASS_NAMES_16)
CAMVID_FULL_ID_TO_TRAIN19 = _common_table(_FULL_AS_SEGNET, CLASS_NAMES_19)
CAMVID_SEGNET_ID_TO_TRAIN16 = _common_table(CAMVID_SEGNET11, CLASS_NAMES_16)
CAMVID_SEGNET_ID_TO_TRAIN19 = _common_table(CAMVID_SEGNET11, CLASS_NAMES_19)

# Named tables the pipeline selects with `config.data.*_label_map`.
LABEL_MAPS = {
    "cityscapes_ids_to_19": lookup_table(CITYSCAPES_ID_TO_TRAIN19),
    "cityscapes_ids_to_16": lookup_table(CITYSCAPES_ID_TO_TRAIN16),
    "cityscapes_ids_to_13": lookup_table(CITYSCAPES_ID_TO_TRAIN13),
    "synthia_ids_to_16": lookup_table(SYNTHIA_ID_TO_TRAIN16),
    "synthia_ids_to_13": lookup_table(SYNTHIA_ID_TO_TRAIN13),
    "crosscity_ids_to_13": lookup_table(CROSSCITY_ID_TO_TRAIN13),
    "camvid_full_ids_to_16": lookup_table(CAMVID_FULL_ID_TO_TRAIN16),
    "camvid_full_ids_to_19": lookup_table(CAMVID_FULL_ID_TO_TRAIN19),
    "camvid_segnet_ids_to_16": lookup_table(CAMVID_SEGNET_ID_TO_TRAIN16),
    "camvid_segnet_ids_to_19": lookup_table(CAMVID_SEGNET_ID_TO_TRAIN19),
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
