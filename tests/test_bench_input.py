"""The input-pipeline benchmark at a tiny size (real builders, real pipeline, pinned subprocess) and its frames."""

import io

import numpy as np
from PIL import Image

from uda_jax.data import bench_input, fake_trees
from uda_jax.data.builders import pairs

SIZE = (12, 20)  # (H, W)


def cityscapes_label(image_path):
  """gtFine/train/CITY/STEM_gtFine_labelIds.png of leftImg8bit/train/CITY/STEM_leftImg8bit.png."""
  stem = image_path.name[: -len("_leftImg8bit.png")]
  return image_path.parents[3] / "gtFine" / "train" / image_path.parent.name / f"{stem}_gtFine_labelIds.png"


def test_tiny_benchmark_runs_and_writes_real_format_frames(tmp_path, capsys):
  out = bench_input.main(["--num_images", "2", "--num_target", "3", "--size", "12,20", "--threads", "1",
                          "--streams", "pair", "gta5", "--steps", "2", "--warmup", "1", "--repeats", "1",
                          "--workdir", str(tmp_path)])
  printed = capsys.readouterr().out
  assert "command: python -m uda_jax.data.bench_input --num_images 2" in printed and "images/s" in printed
  rows = {r["stream"]: r for r in out["rows"]}
  assert set(rows) == {"pair", "gta5"}
  for row in rows.values():
    assert row["images_per_s"] > 0 and row["cpu_ms_per_image"] > 0 and row["cores"] == 1
  # The official sizes whatever the frames' size: the pipeline resizes.
  assert rows["pair"]["shapes"] == {"source_image": [1, 720, 1280, 3], "source_label": [1, 720, 1280],
                                    "target_image": [1, 512, 1024, 3]}
  assert rows["gta5"]["shapes"]["target_image"] == [1, 720, 1280, 3]
  assert out["frames"]["gta5"]["n"] == 2 and out["frames"]["cityscapes"]["n"] == 3

  manual = tmp_path / "manual"
  gta5 = [(p, manual / "gta5" / "labels" / p.name, "P") for p in sorted((manual / "gta5" / "images").glob("*"))]
  city = [(p, cityscapes_label(p), "L") for p in sorted((manual / "cityscapes" / "leftImg8bit" / "train").glob("*/*"))]
  assert len(gta5) == 2 and len(city) == 3
  for image_path, label_path, mode in gta5 + city:
    with Image.open(image_path) as image, Image.open(label_path) as label:
      assert image.mode == "RGB" and image.size == SIZE[::-1]
      assert label.mode == mode and label.size == SIZE[::-1]
      assert np.asarray(image).std() > 0
      assert set(np.unique(np.asarray(label)).tolist()) <= set(pairs.CITYSCAPES_IDS)
  # The same request again reuses the written frames and prepared datasets.
  assert bench_input.make_datasets(tmp_path, 2, 3, SIZE, SIZE)["reused"]


def test_full_size_frame_compresses_like_a_real_render():
  """Random pixels would give ~6 MB and decode far slower than GTA5 frames, flat colour ~50 KB; real: 2-3 MB."""
  image, ids = fake_trees.street_frame(0, fake_trees.GTA5_SIZE)
  assert image.shape == (*fake_trees.GTA5_SIZE, 3) and ids.shape == fake_trees.GTA5_SIZE
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  assert 1.8e6 < len(buffer.getvalue()) < 3.2e6
