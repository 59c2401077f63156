"""Finding, checking and writing image/label pairs: the part every segmentation builder shares.

A builder lists (name, image file, label file) pairs from the manual directory; `SegmentationBuilder` decodes
each file, checks it and yields the TFDS example. Images already stored as 8-bit RGB PNG or RGB JPEG pass
through byte for byte; labels become single-channel 8-bit PNGs of the dataset's raw ids. A problem stops
preparation with a `BadInputError` that names the file, or, with `skip_bad`, is recorded and the pair skipped.
"""

import dataclasses
import io
import logging
import re
import struct
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from uda_jax.errors import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
_COLOUR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}
# Unlabelled splits still carry the label feature: one ignore pixel, never read by the pipeline.
NO_LABEL = np.full((1, 1, 1), 255, np.uint8)

CITYSCAPES_IDS = tuple(range(34))  # labelIds as stored in *_labelIds.png (license plate, id -1, is not drawn)


class BadInputError(UserError):
  """Input the user must fix: missing folders, unpaired or unreadable files, ids out of range."""


class BadPair(Exception):
  """One pair cannot be used; `path` is the offending file."""

  def __init__(self, path: Path, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path = path
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class Pair:
  name: str  # the image's file stem
  image: Path
  label: Path | None  # None for unlabelled splits


def natural_key(text: str) -> list:
  """Sort key that orders digit runs by value ('2.png' before '10.png')."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def find_root(manual_dir: Path, required: tuple[str, ...], layout: str, wrappers: tuple[str, ...] = ()) -> Path:
  """The folder holding all `required` subfolders: manual_dir itself or one of its `wrappers` (archive tops)."""
  if not manual_dir.is_dir() or not any(manual_dir.iterdir()):
    raise BadInputError(f"manual_dir {manual_dir} does not exist or is empty; expected {layout}")
  candidates = [manual_dir, *(manual_dir / w for w in wrappers)]
  # Report what is missing where most of the layout is, preferring an archive top folder that exists.
  def score(folder):
    return sum((folder / sub).is_dir() for sub in required), folder != manual_dir and folder.is_dir()

  best = max(candidates, key=score)
  missing = [str(best / sub) for sub in required if not (best / sub).is_dir()]
  if not missing:
    return best
  raise BadInputError(f"missing {', '.join(missing)}; expected {layout}")


def manual_root(dl_manager, required: tuple[str, ...], layout: str, wrappers: tuple[str, ...] = ()) -> Path:
  """`find_root` on the download manager's manual_dir, turning TFDS's own check into a `BadInputError`."""
  try:
    manual_dir = Path(dl_manager.manual_dir)
  except AssertionError:  # TFDS's check; its message is a paragraph, ours names the folder in one line.
    where = getattr(dl_manager, "_manual_dir", None) or ""
    raise BadInputError(f"manual_dir {where} does not exist or is empty; expected {layout}") from None
  return find_root(manual_dir, required, layout, wrappers)


def index_files(folder: Path, suffixes: tuple[str, ...], pattern: str = "*") -> dict[str, Path]:
  """{key: path} of the files matching `pattern` whose names end in one of `suffixes`; key = name - suffix."""
  found = {}
  for path in folder.glob(pattern):
    suffix = next((s for s in suffixes if path.name.endswith(s)), None)
    if suffix is None or not path.is_file():
      continue
    key = path.name[: -len(suffix)]
    if key in found:
      raise BadInputError(f"{found[key]} and {path} are two files for the same item {key!r}")
    found[key] = path
  return found


def require_files(found: dict[str, Path], folder: Path, what: str, layout: str) -> dict[str, Path]:
  """`found`, or a `BadInputError` when the folder held none of the expected files."""
  if not found:
    raise BadInputError(f"no {what} in {folder}; expected {layout}")
  return found


def match_pairs(
    images: dict[str, Path], labels: dict[str, Path], image_dir: Path, label_dir: Path
) -> tuple[list[Pair], list[BadPair]]:
  """Pairs by key, in natural order of the key, and one problem per image without label or label without image."""
  pairs, problems = [], []
  for key in sorted(images, key=natural_key):
    if key in labels:
      pairs.append(Pair(images[key].stem, images[key], labels[key]))
    else:
      problems.append(BadPair(images[key], f"image has no label in {label_dir}"))
  for key in sorted(labels.keys() - images.keys(), key=natural_key):
    problems.append(BadPair(labels[key], f"label has no image in {image_dir}"))
  return pairs, problems


def unlabelled(images: dict[str, Path]) -> list[Pair]:
  return [Pair(images[key].stem, images[key], None) for key in sorted(images, key=natural_key)]


def png_header(data: bytes, path: Path) -> tuple[int, int, int, int]:
  """(width, height, bit depth, colour type) from the IHDR chunk."""
  if not data.startswith(PNG_SIGNATURE) or len(data) < 26 or data[12:16] != b"IHDR":
    raise BadPair(path, "not a PNG file")
  return struct.unpack(">IIBB", data[16:26])


def describe_png(depth: int, colour: int) -> str:
  return f"{depth}-bit {_COLOUR_TYPES.get(colour, f'colour type {colour}')}"


def _first_line(error: Exception) -> str:
  """The error's first line without TF's op decorations ('{{function_node ...}}', '[Op:DecodeImage]')."""
  text = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:\w+\]", "", getattr(error, "message", None) or str(error)).strip()
  return text.splitlines()[0] if text else type(error).__name__


def read_image(path: Path) -> tuple[bytes | np.ndarray, tuple[int, int]]:
  """(what to store, (height, width)): the file's bytes when 8-bit RGB PNG or RGB JPEG, else RGB pixels.

  Only those two pass through: every decoder (TF, PIL, OpenCV) reads them as the same 3 uint8 channels,
  while e.g. a palette PNG comes back as indices from PIL and a 16-bit PNG is truncated by OpenCV.
  """
  data = path.read_bytes()
  is_png = data.startswith(PNG_SIGNATURE)
  if not is_png and not data.startswith(JPEG_SIGNATURE):
    raise BadPair(path, "not a PNG or JPEG file")
  rgb8_png = is_png and png_header(data, path)[2:] == (8, 2)
  try:  # A full decode is the only way to find truncated or damaged files.
    pixels = tf.io.decode_image(data, channels=0, expand_animations=False)
    if not (rgb8_png or (not is_png and pixels.shape[-1] == 3)):
      pixels = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
      return pixels.numpy(), tuple(pixels.shape[:2])
  except tf.errors.OpError as e:
    raise BadPair(path, f"corrupt image ({_first_line(e)})") from None
  return data, tuple(pixels.shape[:2])


def read_label_8bit(path: Path) -> tuple[np.ndarray, bytes | None]:
  """(ids [H, W] uint8, the file's bytes if storable as they are) of a grayscale or palette PNG.

  A palette PNG (GTA5) holds the ids as palette indices: it is read with PIL, which returns the indices;
  decoders that expand the palette (tf.io.decode_png, OpenCV) would return colours.
  """
  data = path.read_bytes()
  _, _, depth, colour = png_header(data, path)
  if not (colour == 3 or (colour == 0 and depth == 8)):
    raise BadPair(path, "label must be a single-channel 8-bit PNG (grayscale or palette), "
                        f"not {describe_png(depth, colour)}")
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      ids = np.asarray(image, np.uint8)
  except (OSError, SyntaxError, ValueError) as e:
    raise BadPair(path, f"corrupt PNG ({_first_line(e)})") from None
  return ids, data if colour == 0 else None


def read_label_16bit_channel0(path: Path) -> tuple[np.ndarray, None]:
  """(ids [H, W] uint16, None) from channel 0 of a 16-bit RGB(A) PNG, SYNTHIA's label format.

  PIL opens these files as 8-bit RGB and returns zeros for the class channel, silently: decode with TF.
  """
  data = path.read_bytes()
  _, _, depth, colour = png_header(data, path)
  if depth != 16 or colour not in (2, 6):
    raise BadPair(path, "label must be a 16-bit RGB PNG with the class id in channel 0, "
                        f"not {describe_png(depth, colour)}")
  try:
    ids = tf.io.decode_png(data, dtype=tf.uint16).numpy()[..., 0]
  except tf.errors.OpError as e:
    raise BadPair(path, f"corrupt PNG ({_first_line(e)})") from None
  return ids, None


def check_ids(ids: np.ndarray, valid_ids: tuple[int, ...], path: Path) -> None:
  present = np.flatnonzero(np.bincount(ids.ravel()))
  bad = np.setdiff1d(present, valid_ids)
  if bad.size:
    raise BadPair(path, f"label ids {bad[:8].tolist()} outside the dataset's ids {_ranges(valid_ids)}")


def _ranges(ids: tuple[int, ...]) -> str:
  """'0-33, 255' for a sorted id tuple."""
  runs = []
  for i in ids:
    if runs and i == runs[-1][1] + 1:
      runs[-1][1] = i
    else:
      runs.append([i, i])
  return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs)


class SegmentationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Features image / label / name, array_record files, examples in the order the builder lists them.

  Subclasses set VERSION, MANUAL_DOWNLOAD_INSTRUCTIONS, HOMEPAGE, VALID_IDS (raw ids a label may hold),
  optionally READ_LABEL, and write `_split_generators` returning {split: self._generate_examples(...)}.
  """

  HOMEPAGE = ""
  VALID_IDS: tuple[int, ...] = ()
  READ_LABEL = staticmethod(read_label_8bit)

  def __init__(self, *, skip_bad: bool = False, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)
    self.skip_bad = skip_bad
    self.skipped: dict[str, list[BadPair]] = {}  # split -> pairs left out under skip_bad

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.Image(shape=(None, None, 1)),
            "name": tfds.features.Text(),
        }),
        homepage=self.HOMEPAGE,
        # Record i is the i-th pair in sorted order (or the official list's order), on every machine.
        disable_shuffling=True,
    )

  def _skip_or_raise(self, split: str, problem: BadPair) -> None:
    if not self.skip_bad:
      raise BadInputError(f"{problem} (run with --skip_bad to skip such pairs)")
    logging.warning("skipping %s", problem)
    self.skipped.setdefault(split, []).append(problem)

  def _example(self, pair: Pair) -> dict:
    image, size = read_image(pair.image)
    if pair.label is None:
      return {"image": image, "label": NO_LABEL, "name": pair.name}
    ids, label_bytes = self.READ_LABEL(pair.label)
    if ids.shape != size:
      raise BadPair(pair.label, f"label size {ids.shape[1]}x{ids.shape[0]} differs from image {pair.image.name} "
                                f"size {size[1]}x{size[0]}")
    check_ids(ids, self.VALID_IDS, pair.label)
    label = label_bytes if label_bytes is not None else ids.astype(np.uint8)[..., None]
    return {"image": image, "label": label, "name": pair.name}

  def _generate_examples(self, split: str, pairs: list[Pair], problems: tuple[BadPair, ...] | list = ()):
    self.skipped[split] = []
    for problem in problems:
      self._skip_or_raise(split, problem)
    written = 0
    for pair in pairs:
      try:
        example = self._example(pair)
      except BadPair as problem:
        self._skip_or_raise(split, problem)
        continue
      written += 1
      yield pair.name, example
    if not written:
      raise BadInputError(f"no usable image/label pairs for split {split!r} of {self.name}")
