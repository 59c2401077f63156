"""A procedurally generated street-scene domain pair, for tests and quick end-to-end runs.

Both domains share one layout prior (sky on top, buildings and trees on the skyline, a road in perspective at the
bottom, sidewalks, fences, cars parked at the kerb, persons, poles carrying signs) and differ in how it is
rendered:

- `source` ("synthetic"): a flat, saturated palette with clean edges and no noise.
- `target` ("real"): a muted, differently hued palette, per-class texture (facade windows, foliage, asphalt
  grain, paving), a lighting gradient and colour cast per image, blur and sensor noise; cars are a bit more
  frequent and persons a bit rarer than in the source.

Labels hold Cityscapes labelIds (road=7, car=26, ...; 0 = unlabeled), like GTA5's and Cityscapes' label PNGs,
so `labels.LABEL_MAPS['cityscapes_ids_to_19']` maps them to train ids. Every image is a pure function of
(domain, split, index, size): no state, no files.
"""

import numpy as np

DOMAINS = ("source", "target")
SPLITS = ("train", "validation")
DEFAULT_SIZE = (96, 192)  # (H, W)
DEFAULT_SPLIT_SIZES = {
    "source": {"train": 2000, "validation": 200},
    "target": {"train": 2000, "validation": 200},
}

# Cityscapes labelIds of the classes the scenes contain.
UNLABELED = 0
ROAD, SIDEWALK, BUILDING, FENCE, POLE, SIGN = 7, 8, 11, 13, 17, 20
VEGETATION, TERRAIN, SKY, PERSON, CAR = 21, 22, 23, 24, 26
CLASS_IDS = (ROAD, SIDEWALK, BUILDING, FENCE, POLE, SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR)

_SEED = 20240611  # Fixed: the data set is part of the code.

# Base colours (RGB). The source palette is saturated and hue-shifted against the target's muted one, so a
# colour model fit on one domain misreads the other.
_PALETTES = {
    "source": {
        UNLABELED: (120, 120, 120), ROAD: (72, 58, 140), SIDEWALK: (212, 112, 172), BUILDING: (192, 82, 50),
        FENCE: (232, 190, 60), POLE: (112, 112, 124), SIGN: (250, 240, 30), VEGETATION: (40, 190, 62),
        TERRAIN: (160, 232, 82), SKY: (62, 150, 250), PERSON: (240, 40, 62), CAR: (32, 42, 200),
    },
    "target": {
        UNLABELED: (100, 95, 85), ROAD: (88, 88, 92), SIDEWALK: (150, 142, 132), BUILDING: (118, 100, 88),
        FENCE: (132, 118, 95), POLE: (96, 96, 102), SIGN: (190, 160, 50), VEGETATION: (62, 92, 40),
        TERRAIN: (122, 130, 78), SKY: (185, 200, 216), PERSON: (82, 60, 72), CAR: (72, 74, 88),
    },
}
_CAR_COLOURS = {
    "source": ((32, 42, 200), (20, 110, 230), (90, 30, 220)),
    "target": ((72, 74, 88), (40, 40, 45), (165, 165, 170), (130, 45, 40), (200, 200, 205)),
}
# Expected objects per image; the target's street is busier with cars and emptier of people.
_OBJECT_RATES = {
    "source": {CAR: 2.5, PERSON: 2.0, POLE: 2.0, UNLABELED: 0.6},
    "target": {CAR: 3.0, PERSON: 1.5, POLE: 2.0, UNLABELED: 0.6},
}


def rng_for(domain: str, split: str, index: int) -> np.random.Generator:
  """The generator of one example: a pure function of (domain, split, index)."""
  seq = np.random.SeedSequence([_SEED, DOMAINS.index(domain), SPLITS.index(split), int(index)])
  return np.random.default_rng(seq)


def generate(domain: str, split: str, index: int, size: tuple[int, int] = DEFAULT_SIZE):
  """Returns (image uint8 [H, W, 3] RGB, label uint8 [H, W] Cityscapes labelIds) of one example."""
  if domain not in DOMAINS:
    raise ValueError(f"Unknown toy domain {domain!r}; expected one of {DOMAINS}.")
  rng = rng_for(domain, split, index)
  label, instance, shade = _layout(rng, size, _OBJECT_RATES[domain])
  render = _render_target if domain == "target" else _render_source
  return render(rng, label, instance, shade), label


# ---------------------------------------------------------------------------------------------------------------
# Layout: label map, instance ids (for per-object colours) and a shade map (windows, wheels, legs).


def _layout(rng, size, rates):
  h, w = size
  label = np.full((h, w), SKY, np.uint8)
  instance = np.zeros((h, w), np.int32)
  shade = np.ones((h, w), np.float32)
  rows = np.arange(h, dtype=np.float32)[:, None]
  cols = np.arange(w, dtype=np.float32)[None, :]

  horizon = h * rng.uniform(0.40, 0.52)
  vx = w * rng.uniform(0.35, 0.65)  # Vanishing point of the road.
  depth = np.clip((rows - horizon) / (h - horizon), 0.0, 1.0)  # 0 at the horizon, 1 at the bottom row.
  dx = np.abs(cols - vx)
  below = rows >= horizon
  half_road = w * rng.uniform(0.45, 0.75)  # Half-widths at the bottom row.
  half_walk = half_road + w * rng.uniform(0.2, 0.45)
  half_terrain = half_walk + (w * rng.uniform(0.1, 0.4) if rng.random() < 0.5 else 0.0)

  # Skyline: blocks of buildings and trees, occasionally a gap of sky; they reach down to the street.
  next_id = 1
  x = 0.0
  while x < w:
    width = w * rng.uniform(0.08, 0.25)
    kind = rng.choice([BUILDING, VEGETATION, SKY], p=[0.6, 0.3, 0.1])
    in_block = (cols >= x) & (cols < x + width)
    if kind == BUILDING:
      top = horizon - h * rng.uniform(0.12, 0.4)
      mask = in_block & (rows >= top)
    elif kind == VEGETATION:
      top = horizon - h * rng.uniform(0.08, 0.25)
      centre = x + width / 2
      # A rounded crown; at its edges the foliage still reaches down to the street.
      crown = np.minimum(top + 0.5 * h * ((cols - centre) / max(width, 1.0)) ** 2, horizon)
      mask = in_block & (rows >= crown)
    else:
      mask = in_block & below
      kind = TERRAIN
    label[mask] = kind
    instance[mask] = next_id
    next_id += 1
    x += width
  label[below & (dx <= half_terrain * depth)] = TERRAIN
  label[below & (dx <= half_walk * depth)] = SIDEWALK
  label[below & (dx <= half_road * depth)] = ROAD
  instance[below & (dx <= half_terrain * depth)] = 0

  # A fence along part of one sidewalk's outer edge.
  if rng.random() < 0.5:
    side = rng.choice([-1.0, 1.0])
    x0, x1 = sorted(vx + side * w * rng.uniform(0.05, 0.9, size=2))
    edge = horizon + (h - horizon) * dx / half_walk  # Row where the outer edge meets each column.
    height = 0.22 * h * np.clip((edge - horizon) / (h - horizon), 0, 1) + 1
    on_side = (cols - vx) * side > 0
    fence = on_side & (cols >= x0) & (cols <= x1) & (rows < edge) & (rows >= edge - height)
    label[fence], instance[fence] = FENCE, next_id
    next_id += 1

  # Objects, drawn far to near so that near ones occlude.
  objects = []
  for kind, rate in rates.items():
    objects += [(rng.uniform(0.12, 1.0), kind) for _ in range(rng.poisson(rate))]
  maps = (label, instance, shade)
  for d, kind in sorted(objects):
    side = rng.choice([-1.0, 1.0])
    base = horizon + d * (h - horizon)
    unit = 0.55 * h * d  # Pixel size of ~1.5 m at this depth.
    road_edge, walk_edge = half_road * d, half_walk * d
    if kind == CAR:
      cw, ch = 1.25 * unit, 0.55 * unit
      xc = vx + side * (road_edge - 0.6 * cw + rng.uniform(-0.1, 0.1) * cw)
      _paint(maps, next_id, CAR, base - 0.6 * ch, base, xc - cw / 2, xc + cw / 2)
      _paint(maps, next_id, CAR, base - ch, base - 0.6 * ch, xc - 0.35 * cw, xc + 0.3 * cw)
      _darken(shade, 0.55, base - 0.95 * ch, base - 0.65 * ch, xc - 0.3 * cw, xc + 0.25 * cw)  # Windows.
      for wheel in (-0.3, 0.3):
        _darken(shade, 0.3, base - 0.15 * ch, base, xc + (wheel - 0.1) * cw, xc + (wheel + 0.1) * cw)
    elif kind == PERSON:
      ph, pw = 0.7 * unit, max(0.2 * unit, 1.0)
      xc = vx + side * (road_edge + rng.uniform(0.2, 0.8) * (walk_edge - road_edge))
      _paint(maps, next_id, PERSON, base - 0.86 * ph, base, xc - pw / 2, xc + pw / 2)
      _paint(maps, next_id, PERSON, base - ph, base - 0.86 * ph, xc - 0.3 * pw, xc + 0.3 * pw)
      _darken(shade, 0.6, base - 0.4 * ph, base, xc - pw / 2, xc + pw / 2)  # Trousers.
    elif kind == POLE:
      height, width = 1.6 * unit, max(0.07 * unit, 1.0)
      xc = vx + side * (walk_edge - rng.uniform(0.0, 0.15) * (walk_edge - road_edge))
      _paint(maps, next_id, POLE, base - height, base, xc - width / 2, xc + width / 2)
      if rng.random() < 0.7:  # A sign at the top, facing the road.
        s = max(0.3 * unit, 2.0)
        top = base - height
        next_id += 1
        _paint(maps, next_id, SIGN, top, top + s, min(xc, xc - side * s), max(xc, xc - side * s))
    else:  # Unlabeled street furniture (bins, boxes) on the sidewalk.
      s = max(0.22 * unit, 1.0)
      xc = vx + side * (road_edge + rng.uniform(0.1, 0.9) * (walk_edge - road_edge))
      _paint(maps, next_id, UNLABELED, base - s, base, xc - s / 2, xc + s / 2)
    next_id += 1
  return label, instance, shade


def _rect(shape, top, bottom, left, right):
  """Slices of the box [top, bottom) x [left, right) (float bounds, rounded and clipped); None if empty."""
  r0, r1 = max(int(round(top)), 0), min(int(round(bottom)), shape[0])
  c0, c1 = max(int(round(left)), 0), min(int(round(right)), shape[1])
  return (slice(r0, r1), slice(c0, c1)) if r1 > r0 and c1 > c0 else None


def _paint(maps, object_id, class_id, *bounds):
  """Draws an opaque box of one object: its class, its instance id, and no shading from what it hides."""
  label, instance, shade = maps
  box = _rect(label.shape, *bounds)
  if box:
    label[box], instance[box], shade[box] = class_id, object_id, 1.0


def _darken(shade, factor, *bounds):
  box = _rect(shade.shape, *bounds)
  if box:
    shade[box] = factor


# ---------------------------------------------------------------------------------------------------------------
# Rendering.


def _base_colours(rng, domain, label, instance, jitter):
  """Per-pixel palette colour, with a random offset per instance (and a random colour per car)."""
  table = np.zeros((256, 3), np.float32)
  for class_id, colour in _PALETTES[domain].items():
    table[class_id] = colour
  num = int(instance.max()) + 1
  offsets = rng.uniform(-jitter, jitter, size=(num, 3)).astype(np.float32)
  offsets[0] = 0.0
  choices = np.asarray(_CAR_COLOURS[domain], np.float32)
  car_colours = choices[rng.integers(len(choices), size=num)]
  cars = np.unique(instance[label == CAR])  # Instance ids are per object, so a car's id is only on the car.
  offsets[cars] += car_colours[cars] - table[CAR]
  return table[label] + offsets[instance]


def _render_source(rng, label, instance, shade):
  image = _base_colours(rng, "source", label, instance, jitter=10.0)
  image *= shade[..., None]
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _render_target(rng, label, instance, shade):
  h, w = label.shape
  image = _base_colours(rng, "target", label, instance, jitter=18.0)
  rows = np.arange(h, dtype=np.float32)[:, None]
  cols = np.arange(w, dtype=np.float32)[None, :]

  # Per-class texture.
  period_r, period_c = rng.integers(5, 9), rng.integers(6, 11)
  windows = ((rows % period_r) < period_r // 2) & ((cols % period_c) < period_c // 2)
  texture = np.ones((h, w), np.float32)
  texture[(label == BUILDING) & windows] = 0.65
  texture[(label == SIDEWALK) & ((cols % 9 == 0) | (rows % 5 == 0))] = 0.85
  foliage = 1.0 + 0.3 * _smooth_noise(rng, h, w, cell=4)
  texture = np.where((label == VEGETATION) | (label == TERRAIN), texture * foliage, texture)
  grain = 1.0 + 0.08 * rng.standard_normal((h, w), dtype=np.float32)
  texture = np.where(label == ROAD, texture * grain, texture)
  sky_glow = 1.0 + 0.15 * rows / h  # Sky brightens towards the horizon.
  texture = np.where(label == SKY, texture * sky_glow, texture)
  image *= (texture * shade)[..., None]

  # Lighting: a linear gradient in a random direction and a colour cast.
  angle = rng.uniform(0, 2 * np.pi)
  ramp = (np.cos(angle) * (cols / w - 0.5) + np.sin(angle) * (rows / h - 0.5))
  light = rng.uniform(0.8, 1.1) + rng.uniform(0.2, 0.5) * ramp
  cast = rng.uniform(0.88, 1.12, size=3).astype(np.float32)
  image *= light[..., None] * cast

  # Optics and sensor.
  image = _blur(image)
  image += rng.uniform(3.0, 8.0) * rng.standard_normal(image.shape, dtype=np.float32)
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _smooth_noise(rng, h, w, cell):
  """Blotchy noise in about [-1, 1]: coarse Gaussian cells, upsampled and blurred."""
  coarse = rng.standard_normal((h // cell + 1, w // cell + 1), dtype=np.float32)
  fine = np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[:h, :w]
  return np.clip(_blur(_blur(fine[..., None]))[..., 0], -2, 2) / 2


def _blur(image):
  """Separable [1, 2, 1] / 4 blur over H and W of an [H, W, C] array, edges replicated."""
  for axis in (0, 1):
    x = np.swapaxes(image, 0, axis)
    y = 0.5 * x
    y[1:] += 0.25 * x[:-1]
    y[:-1] += 0.25 * x[1:]
    y[0] += 0.25 * x[0]
    y[-1] += 0.25 * x[-1]
    image = np.swapaxes(y, 0, axis)
  return image
