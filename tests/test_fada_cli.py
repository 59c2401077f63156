"""FADA's three stages chained from the command line on the toy: src -> adv -> predict -> sd, and the mistakes."""

import json
import os

import numpy as np
from PIL import Image

from test_cli import ROOT, _main

FADA = os.path.join(ROOT, "configs", "fada.py")


def _small(data_dir):
  return [f"--config.data.data_dir={data_dir}", "--config.train.num_steps=2", "--config.train.eval_every=2",
          "--config.train.checkpoint_every=2", "--config.train.log_every=1", "--config.model.width=8",
          "--config.disc.width=8", "--config.data.batch_size=2", "--config.eval.num_images=0",
          "--config.data.source_size=(32,64)", "--config.data.target_size=(32,64)", "--config.data.eval_size=(32,64)"]


def _ok(out):
  assert out.returncode == 0, out.stderr[-3000:]
  return out


def _error(out, message):
  assert out.returncode == 2, out.stderr[-3000:]
  assert message in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]


def test_toy_chain_src_adv_predict_sd(toy_data_dir, tmp_path):
  small = _small(toy_data_dir)
  src, adv, sd, pseudo = (str(tmp_path / n) for n in ("src", "adv", "sd", "pseudo"))

  # The adversarial stage refuses to start from scratch, and writes nothing.
  _error(_main(f"--config={FADA}:toy,adv", f"--workdir={adv}", *small), "continues a source-only run")
  assert not os.path.exists(adv)

  _ok(_main(f"--config={FADA}:toy,src", f"--workdir={src}", *small))
  # A checkpoint of another class count is refused with the offending variables named.
  _error(_main(f"--config={FADA}:toy,adv", f"--workdir={tmp_path / 'adv16'}", f"--config.init_from={src}",
               "--config.model.num_classes=16", "--config.eval.class_set=synthia16",
               "--config.eval.class_subset=()", *small), "shape mismatch")
  out = _ok(_main(f"--config={FADA}:toy,adv", f"--workdir={adv}", f"--config.init_from={src}", *small))
  assert "init_from run" in out.stderr  # the segmenter came from the source-only run
  with open(os.path.join(adv, "eval_final.json")) as f:
    assert json.load(f)["step"] == 2  # the schedule restarted at 0

  # Hard pseudo-labels of the target training split: palette PNGs of train ids at native size, plus a dataset.
  predict = [f"--config={FADA}:toy,adv", f"--workdir={adv}", "--mode=predict", f"--config.predict.output_dir={pseudo}",
             "--config.predict.confidence=True", *small]
  _ok(_main(*predict))
  with open(os.path.join(pseudo, "manifest.json")) as f:
    manifest = json.load(f)
  assert manifest["dataset"] == "uda_toy/target" and manifest["split"] == "train"
  assert manifest["num_examples"] == 64 and manifest["checkpoint"]["step"] == 2
  pngs = sorted(os.listdir(os.path.join(pseudo, "labels")))
  assert len(pngs) == 64
  label = Image.open(os.path.join(pseudo, "labels", pngs[0]))
  assert label.mode == "P" and label.size == (192, 96)  # the toy's native 96x192, not the 32x64 input
  assert np.asarray(label).max() < 19
  conf = np.asarray(Image.open(os.path.join(pseudo, "confidence", pngs[0])))
  assert conf.dtype == np.uint16 and conf.shape == (96, 192) and conf.min() >= 65535 // 19
  _ok(_main(*predict))  # the same set again: left as it is
  # Another checkpoint's predictions into the same directory: refused, the set untouched.
  _error(_main(*predict[:-len(small)], "--config.eval.scales=(0.5,1.0)", *small), "already holds predictions")
  assert json.load(open(os.path.join(pseudo, "manifest.json"))) == manifest

  # Self-distillation on the pseudo-labels (random scale of the native image + crop, SyncBN); pseudo-labels of
  # another split are refused before anything is written.
  small_sd = [a for a in small if "source_size" not in a] + ["--config.data.source_aug.crop=(32,64)"]
  _error(_main(f"--config={FADA}:toy,sd", f"--workdir={sd}", f"--config.data.source={pseudo}",
               "--config.data.target_split=validation", *small_sd), "were predicted on uda_toy/target:train")
  assert not os.path.exists(sd)
  _ok(_main(f"--config={FADA}:toy,sd", f"--workdir={sd}", f"--config.data.source={pseudo}", *small_sd))
  with open(os.path.join(sd, "eval_final.json")) as f:
    assert 0.0 <= json.load(f)["mIoU"] <= 100.0


def test_predict_on_a_folder_of_images(toy_data_dir, tmp_path):
  folder = tmp_path / "mine"
  (folder / "sub").mkdir(parents=True)
  rng = np.random.default_rng(0)
  for name, (h, w) in {"a.png": (40, 60), "b.jpg": (40, 60), "sub/c.png": (30, 50)}.items():
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)
  (folder / "notes.txt").write_text("not an image")
  out_dir = tmp_path / "out"
  small = _small(toy_data_dir)
  _ok(_main(f"--config={FADA}:toy,src", f"--workdir={tmp_path / 'src'}", *small))
  _ok(_main(f"--config={FADA}:toy,src", f"--workdir={tmp_path / 'src'}", "--mode=predict",
            f"--config.predict.input_dir={folder}", f"--config.predict.output_dir={out_dir}", *small))
  sizes = {p: Image.open(out_dir / "labels" / p).size for p in ("a.png", "b.png", "sub/c.png")}
  assert sizes == {"a.png": (60, 40), "b.png": (60, 40), "sub/c.png": (50, 30)}
  assert json.load(open(out_dir / "manifest.json"))["num_examples"] == 3
