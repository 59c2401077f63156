"""Importer of official PyTorch checkpoints: key coverage, errors, files, and forward parity with PyTorch."""

import hashlib
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import official_keys as ok
from uda_jax.tools import import_torch as it
from uda_jax.models.fcn8s import ConvTranspose
from uda_jax.tools.init_from import load_init
from uda_jax.tools.torch_keys import join_indices

TOL = 1e-5
BLOCKS = (1, 1, 2, 1)  # reduced depth, official names and widths


@pytest.fixture(scope="module")
def tr():
  torch = pytest.importorskip("torch")
  torch.set_num_threads(2)
  import torch_reference  # pylint: disable=g-import-not-at-top
  return torch_reference


def rel_err(ours, ref_nchw):
  ref = ref_nchw.detach().permute(0, 2, 3, 1).numpy()
  assert np.shape(ours) == ref.shape
  err = float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())
  print(f"rel err {err:.2e}")
  return err


def image(n=1, h=65, w=97, seed=1):
  return np.random.default_rng(seed).standard_normal((n, h, w, 3)).astype(np.float32)


def nchw(tr, x):
  return tr.torch.from_numpy(x).permute(0, 3, 1, 2)


def resnet_multi_keys(num_classes=19, blocks=BLOCKS, counter=False):
  s = ok.resnet_keys(blocks, counter=counter)
  return ok.aspp_keys(ok.aspp_keys(s, "layer5", 1024, num_classes), "layer6", 2048, num_classes)


def pixel_d_keys(shapes, prefix, cin, ndf=256, num_classes=19):
  """FADA core/models/discriminator.py PixelDiscriminator(cin, ndf, num_classes) keys."""
  for name, o, i in (("D.0", ndf, cin), ("D.2", ndf // 2, ndf), ("cls1", num_classes, ndf // 2),
                     ("cls2", num_classes, ndf // 2)):
    shapes[f"{prefix}.{name}.weight"], shapes[f"{prefix}.{name}.bias"] = (o, i, 3, 3), (o,)
  return shapes


D_PATHS = {"D.0.weight": "D_0/conv/kernel", "D.0.bias": "D_0/conv/bias", "D.2.weight": "D_2/conv/kernel",
           "D.2.bias": "D_2/conv/bias", "cls1.weight": "cls1/conv/kernel", "cls1.bias": "cls1/conv/bias",
           "cls2.weight": "cls2/conv/kernel", "cls2.bias": "cls2/conv/bias"}


def fada_checkpoint(torch, sd, model_d=None):
  """An official FADA checkpoint as train_src.py / train_adv.py save it (DDP `module.` prefixes)."""
  t = lambda a: torch.from_numpy(a)
  fe = lambda k: k.removeprefix("feature_extractor.") if k.startswith("feature_extractor.") else f"backbone.{k}"
  ckpt = {"iteration": 20000,
          "feature_extractor": {f"module.{fe(k)}": t(a) for k, a in sd.items() if not k.startswith("classifier")},
          "classifier": {f"module.{k.removeprefix('classifier.')}": t(a) for k, a in sd.items()
                         if k.startswith("classifier")},
          "optimizer_fea": {"state": {}, "param_groups": [{"lr": 0.1}]}}
  if model_d is not None:
    ckpt["model_D"] = {f"module.{k.removeprefix('model_D.')}": t(a) for k, a in model_d.items()}
    ckpt["optimizer_D"] = {"state": {}, "param_groups": [{"lr": 1e-4}]}
  return ckpt


# ---- key coverage of the full official key sets (shapes only) ----

def test_full_resnet101_key_sets_map_completely():
  branch_23 = {f"layer{h}.conv2d_list.{b}.{l}" for h in (5, 6) for b in (2, 3) for l in ("weight", "bias")}
  # AdaptSegNet GTA2Cityscapes_multi: everything used, branches 2-3 by design.
  _, rep = it.plan_import("deeplabv2_resnet101", resnet_multi_keys(blocks=(3, 4, 23, 3)))
  assert (rep.unused, rep.missing, rep.source) == ([], [], "deeplab_multi")
  assert set(rep.unused_by_design) == branch_23 and len(rep.mapped) == len(ok.resnet_keys()) + 8
  # DeepLab init: `Scale.` stripped, its 2048-in layer5 skipped for 19 classes; both heads start fresh.
  shapes = {f"Scale.{k}": v for k, v in ok.resnet_keys().items()}
  ok.aspp_keys(shapes, "Scale.layer5", 2048, 21)
  _, rep = it.plan_import("deeplabv2_resnet101", shapes)
  assert rep.unused == [] and rep.source == "deeplab_init"
  assert set(rep.unused_by_design) == {k for k in shapes if ".layer5." in k}
  assert {p.split("/")[1] for p in rep.missing} == {"layer5", "layer6"}
  assert rep.mapped["Scale.layer3.0.downsample.1.running_var"] == "batch_stats/backbone/layer3_0/downsample_1/var"
  # torchvision resnet101: fc unused by design, main head fresh.
  _, rep = it.plan_import("deeplabv2_resnet101_tv", ok.resnet_keys(fc=True))
  assert rep.unused == [] and set(rep.unused_by_design) == {"fc.weight", "fc.bias"}
  assert {p.split("/")[1] for p in rep.missing} == {"layer6"} and len(rep.missing) == 8
  # FADA: feature_extractor (DDP `module.`) + classifier (4 branches) + model_D (FADA's d_main state).
  shapes = {f"feature_extractor.module.backbone.{k}": v for k, v in ok.resnet_keys().items()}
  ok.aspp_keys(shapes, "classifier.module", 2048, 19)
  pixel_d_keys(shapes, "model_D.module", 2048)
  plan, rep = it.plan_import("deeplabv2_resnet101_tv", shapes)
  assert (rep.unused, rep.missing, rep.unused_by_design, rep.source) == ([], [], {}, "fada")
  assert len(rep.mapped) == len(ok.resnet_keys()) + 8 + 8
  for k, p in D_PATHS.items():
    assert rep.mapped[f"model_D.module.{k}"] == f"discriminators/d_main/{p}"
  assert plan["model_D.module.D.2.weight"].kind == "conv"
  assert "width (disc.width) 256, 19 classes per domain" in rep.discriminators["d_main"]
  assert "d_main: FADA PixelDiscriminator, in 2048" in rep.format()
  # An FCDiscriminator-style model_D has no place: unused (strict fails), not silently dropped.
  _, rep = it.plan_import("deeplabv2_resnet101_tv", {"model_D.conv1.weight": (64, 2048, 4, 4)})
  assert rep.unused == ["model_D.conv1.weight"] and rep.discriminators == {}


def test_full_fada_vgg16_key_set_maps_with_discriminator():
  shapes = {f"feature_extractor.module.backbone.{k.removeprefix('features.')}": v
            for k, v in ok.deeplab_vgg16_keys().items() if k.startswith("features.")}
  ok.aspp_keys(shapes, "classifier.module", 1024, 19)
  pixel_d_keys(shapes, "model_D.module", 1024)
  _, rep = it.plan_import("deeplabv2_vgg16", shapes)
  assert (rep.unused, rep.missing, rep.source) == ([], [], "fada_vgg16")
  assert set(rep.unused_by_design) == {f"classifier.module.conv2d_list.{b}.{l}" for b in (2, 3)
                                       for l in ("weight", "bias")}
  assert rep.mapped["feature_extractor.module.backbone.31.weight"] == "params/fc7/conv/kernel"
  assert rep.mapped["model_D.module.cls2.bias"] == "discriminators/d_main/cls2/conv/bias"
  assert "in 1024, width (disc.width) 256" in rep.discriminators["d_main"]


def test_fada_discriminator_checked_for_consistency():
  def plan(d, num_classes=19, **kw):
    return it.plan_import("deeplabv2_resnet101_tv", d, num_classes, blocks=BLOCKS, **kw)

  good = pixel_d_keys({}, "model_D", 2048, ndf=16)
  _, rep = plan(good)
  assert len(rep.mapped) == 8 and set(rep.discriminators) == {"d_main"}
  _, rep = plan(pixel_d_keys({}, "model_D", 2048, ndf=16, num_classes=1))  # binary domain discriminator
  assert "1 classes per domain" in rep.discriminators["d_main"]
  bad = {**good, "model_D.D.2.weight": (8, 12, 3, 3)}  # in != D.0's out
  with pytest.raises(ValueError, match=r"'model_D.D.2.weight' has shape \(8, 12, 3, 3\), expected \(8, 16, 3, 3\)"):
    plan(bad)
  bad = {**good, "model_D.cls1.weight": (19, 16, 3, 3)}  # in != D.2's out
  with pytest.raises(ValueError, match=r"'model_D.cls1.weight'.*expected \(19, 8, 3, 3\)"):
    plan(bad)
  with pytest.raises(ValueError, match=r"'model_D.cls1.weight'.*expected \(16, 8, 3, 3\).*--num-classes"):
    plan(good, num_classes=16)  # cls heads of 19 classes
  bad = {**good, "model_D.cls2.bias": (18,)}
  with pytest.raises(ValueError, match=r"'model_D.cls2.bias' has shape \(18,\), expected \(19,\)"):
    plan(bad)
  bad = {**good, "model_D.D.0.weight": (16, 2048, 1, 1)}
  with pytest.raises(ValueError, match=r"'model_D.D.0.weight' has shape \(16, 2048, 1, 1\), expected \(ndf, in, 3"):
    plan(bad)
  partial = {k: v for k, v in good.items() if not k.startswith("model_D.cls2")}
  with pytest.raises(ValueError, match="incomplete.*cls2/conv/kernel, cls2/conv/bias.*--skip model_D"):
    plan(partial)
  _, rep = plan(partial, skip=["model_D"])  # left out on request: the segmenter alone
  assert rep.discriminators == {} and len(rep.unused_by_design) == 6


def test_full_vgg_and_fcn_key_sets_map_completely():
  _, rep = it.plan_import("deeplabv2_vgg16", ok.deeplab_vgg16_keys())
  assert (rep.unused, rep.missing, rep.source) == ([], [], "deeplab_vgg16") and len(rep.unused_by_design) == 4
  _, rep = it.plan_import("deeplabv2_vgg16", ok.vgg16_keys())
  assert rep.unused == [] and rep.source == "torchvision_vgg16"
  assert rep.mapped["features.24.weight"] == "params/conv5_1/conv/kernel"  # after pool4 at 23
  assert {p.split("/")[1] for p in rep.missing} == {"fc6", "fc7", "classifier"}
  _, rep = it.plan_import("fcn8s_vgg16", ok.fcn8s_keys())
  assert (rep.unused, rep.missing, rep.unused_by_design, rep.source) == ([], [], {}, "fcn8s")
  _, rep = it.plan_import("fcn8s_vgg16", ok.vgg16_keys())
  assert rep.unused == [] and set(rep.unused_by_design) == {"classifier.6.weight", "classifier.6.bias"}
  assert rep.mapped["classifier.0.weight"] == "params/fc6/conv/kernel"
  assert {p.split("/")[1] for p in rep.missing} == {"score_fr", "score_pool3", "score_pool4", "upscore2",
                                                     "upscore_pool4", "upscore8"}


# ---- errors and reports ----

def test_shape_mismatch_names_key_and_shapes():
  with pytest.raises(ValueError, match=r"'layer5.conv2d_list.0.weight'.*\(19, 1024, 3, 3\).*\(16, 1024, 3, 3\)"):
    it.plan_import("deeplabv2_resnet101", resnet_multi_keys(), num_classes=16, blocks=BLOCKS)
  # Leaving the heads out on request makes it importable.
  _, rep = it.plan_import("deeplabv2_resnet101", resnet_multi_keys(), num_classes=16, blocks=BLOCKS,
                          skip=["layer5", "layer6"])
  assert rep.unused == [] and len(rep.missing) == 8


def test_unused_and_missing_reported():
  shapes = resnet_multi_keys(counter=True)
  del shapes["layer3.1.conv2.weight"]
  shapes["layer3.7.conv2.weight"] = (256, 256, 3, 3)  # not in the reduced-depth model
  _, rep = it.plan_import("deeplabv2_resnet101", shapes, blocks=BLOCKS)
  assert rep.unused == ["layer3.7.conv2.weight"]
  assert rep.missing == ["params/backbone/layer3_1/conv2/conv/kernel"]
  assert "layer1.0.bn1.num_batches_tracked" in rep.ignored
  text = rep.format()
  assert "layer3.7.conv2.weight" in text and "params/backbone/layer3_1/conv2/conv/kernel" in text
  with pytest.raises(ValueError, match="strict"):
    it.import_state_dict("deeplabv2_resnet101", ok.randomize(shapes), blocks=BLOCKS, strict=True)


def fresh_variables(arch, **kwargs):
  """Stand-in for model.init (random values, right tree), without the slow eager init on CPU."""
  model = it.make_model(arch, **kwargs)
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 33, 33, 3)))
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)


def _save_npz(path, sd):
  np.savez(path, **sd)
  return path


def test_hash_prefix_checked(tmp_path):
  sd = ok.randomize(ok.aspp_keys({}, "classifier", 1024, 19, 2))
  plain = _save_npz(tmp_path / "w.npz", sd)
  digest = hashlib.sha256(plain.read_bytes()).hexdigest()
  good = tmp_path / f"w-{digest[:8]}.npz"
  os.rename(plain, good)
  arrays, _ = it.load_checkpoint_file(str(good))
  assert set(arrays) == set(sd)
  bad = tmp_path / "w-deadbeef.npz"
  shutil.copy(good, bad)
  with pytest.raises(ValueError, match="SHA-256.*deadbeef"):
    it.load_checkpoint_file(str(bad))
  it.load_checkpoint_file(str(bad), check_hash=False)


def test_npz_works_without_torch(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
  sd = ok.randomize(ok.aspp_keys({}, "classifier", 1024, 19))
  arrays, _ = it.load_checkpoint_file(str(_save_npz(tmp_path / "heads.npz", sd)))
  v, rep = it.import_state_dict("deeplabv2_vgg16", arrays)
  np.testing.assert_array_equal(v["params"]["classifier"]["conv2d_list_1"]["conv"]["kernel"],
                                sd["classifier.conv2d_list.1.weight"].transpose(2, 3, 1, 0))
  (tmp_path / "model.pth").write_bytes(b"PK")
  with pytest.raises(ImportError, match=r"pip install -e '\.\[torch\]'"):
    it.load_checkpoint_file(str(tmp_path / "model.pth"))
  # A .pth that is not there is reported as missing, not as needing PyTorch.
  with pytest.raises(ValueError, match="nope.pth does not exist"):
    it.load_checkpoint_file(str(tmp_path / "nope.pth"))


def test_cli_checkpoint_restores_with_load_init(tmp_path, capsys):
  shapes = {k: v for k, v in ok.deeplab_vgg16_keys().items() if not k.startswith(("features.29", "features.31"))}
  sd = ok.randomize(shapes)
  src = _save_npz(tmp_path / "partial.npz", sd)
  out = tmp_path / "ckpt"
  assert it.main(["--arch", "deeplabv2_vgg16", "--input", str(src), "--output", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "params/fc7/conv/kernel" in printed and "params/conv5_3/conv/kernel" not in printed  # missing listed
  assert "classifier.conv2d_list.3.bias" in printed  # unused by design listed
  assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
  assert it.main(["--arch", "deeplabv2_vgg16", "--input", str(src), "--output", str(out)]) == 2
  assert capsys.readouterr().err == f"error: --output {out} exists (use --force to replace it)\n"

  imported, _ = it.import_state_dict("deeplabv2_vgg16", sd)
  fresh = fresh_variables("deeplabv2_vgg16")
  merged = load_init(str(out), fresh)
  flat = lambda t: {jax.tree_util.keystr(p): l for p, l in jax.tree_util.tree_flatten_with_path(t)[0]}
  got, want, init = flat(merged), flat(imported), flat(fresh)
  assert set(got) == set(init)
  for k, v in got.items():
    np.testing.assert_array_equal(v, want[k] if k in want else init[k], err_msg=k)
  assert "['params']['fc7']['conv']['kernel']" not in want  # kept fresh

  other = fresh_variables("deeplabv2_vgg16", num_classes=16)
  with pytest.raises(ValueError, match=r"params/classifier/conv2d_list_0/conv/kernel: checkpoint \(3, 3, 1024, 19\)"):
    load_init(str(out), other)
  one = fresh_variables("deeplabv2_vgg16", aspp_branches=1)
  with pytest.raises(ValueError, match="conv2d_list_1"):
    load_init(str(out), one)


def test_cli_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path, capsys):
  text = tmp_path / "notes.pth"
  text.write_text("not a checkpoint\n")
  png = tmp_path / "image.pth"
  png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
  renamed = tmp_path / "resnet101-5d3b4d8f.pth"  # a torch hub name whose hash prefix the bytes do not have
  renamed.write_bytes(b"\x80\x02}q\x00.")
  exists = tmp_path / "exists"
  exists.mkdir()
  out = tmp_path / "out"
  cases = [(tmp_path / "missing.pth", out, f"--input {tmp_path / 'missing.pth'} does not exist"),
           (text, out, f"{text} is not a PyTorch checkpoint"),
           (png, out, f"{png} is not a PyTorch checkpoint"),
           (renamed, out, f"{renamed}: SHA-256"),
           (text, exists, f"--output {exists} exists (use --force to replace it)")]
  for src, dst, message in cases:
    if "PyTorch" in message:
      pytest.importorskip("torch")
    assert it.main(["--arch", "deeplabv2_resnet101", "--input", str(src), "--output", str(dst)]) == 2, message
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not out.exists() and os.listdir(exists) == []
  assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


# ---- forward parity with PyTorch ----

def test_resnet_caffe_parity_eval(tr):
  """AdaptSegNet DeeplabMulti release (4-branch heads of which the official forward sums 2)."""
  sd = ok.randomize(resnet_multi_keys(counter=True))
  v, rep = it.import_state_dict("deeplabv2_resnet101", sd, blocks=BLOCKS)
  assert rep.unused == [] and rep.missing == [] and len(rep.unused_by_design) == 8
  x = image()
  out = it.make_model("deeplabv2_resnet101", blocks=BLOCKS).apply(v, jnp.asarray(x))
  t = tr.tensors(sd)
  with tr.torch.no_grad():
    f3, f4 = tr.resnet(t, nchw(tr, x), "caffe", BLOCKS, tr.bn_eval(t))
    assert rel_err(out["main"], tr.aspp(t, "layer6", f4, 2)) < TOL
    assert rel_err(out["aux"], tr.aspp(t, "layer5", f3, 2)) < TOL
    assert rel_err(out["features"], f4) < TOL


def test_resnet_caffe_parity_train_bn(tr):
  """model.train(): batch statistics, and running statistics updated like torch (momentum 0.1, unbiased)."""
  sd = ok.randomize(resnet_multi_keys(), seed=5)
  v, _ = it.import_state_dict("deeplabv2_resnet101", sd, blocks=BLOCKS)
  x = image(2, seed=2)
  out, upd = it.make_model("deeplabv2_resnet101", blocks=BLOCKS).apply(v, jnp.asarray(x), train=True,
                                                                      mutable=["batch_stats"])
  t, running = tr.tensors(sd), {}
  with tr.torch.no_grad():
    f3, f4 = tr.resnet(t, nchw(tr, x), "caffe", BLOCKS, tr.bn_train(t, running))
    assert rel_err(out["main"], tr.aspp(t, "layer6", f4, 2)) < TOL
    assert rel_err(out["aux"], tr.aspp(t, "layer5", f3, 2)) < TOL
  stats = upd["batch_stats"]["backbone"]
  for name, (mean, var) in running.items():
    node = stats
    for p in join_indices(name.split(".")):
      node = node[p]
    np.testing.assert_allclose(node["mean"], mean.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(node["var"], var.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_resnet_tv_fada_parity_from_pth(tr, tmp_path):
  """FADA checkpoint file: nested dict, DDP prefixes, frozen BN without eps, all 4 ASPP branches."""
  torch = tr.torch
  sd = ok.randomize(ok.aspp_keys(ok.resnet_keys(BLOCKS), "classifier", 2048, 19), seed=3)
  torch.save(fada_checkpoint(torch, sd), tmp_path / "model_iter020000.pth")
  v, rep = it.import_file("deeplabv2_resnet101_tv", str(tmp_path / "model_iter020000.pth"), blocks=BLOCKS)
  assert rep.unused == [] and rep.missing == [] and rep.source == "fada"
  assert set(rep.ignored) == {"iteration", "optimizer_fea"}
  assert "discriminators" not in v and rep.discriminators == {}  # no model_D in the file
  x = image()
  out = it.make_model("deeplabv2_resnet101_tv", blocks=BLOCKS).apply(v, jnp.asarray(x))
  t = tr.tensors(sd)
  with torch.no_grad():
    _, f4 = tr.resnet(t, nchw(tr, x), "torchvision", BLOCKS, tr.bn_frozen_no_eps(t))
    assert rel_err(out["main"], tr.aspp(t, "classifier", f4, 4)) < TOL
    assert rel_err(out["features"], f4) < TOL


def test_deeplab_vgg16_parity(tr):
  """AdaptSegNet GTA2Cityscapes_vgg release layout (4 branches stored, 2 summed)."""
  sd = ok.randomize(ok.deeplab_vgg16_keys(), seed=4)
  v, rep = it.import_state_dict("deeplabv2_vgg16", sd)
  assert rep.unused == [] and rep.missing == []
  x = image()
  out = it.make_model("deeplabv2_vgg16").apply(v, jnp.asarray(x))
  t = tr.tensors(sd)
  with tr.torch.no_grad():
    main, fc7 = tr.deeplab_vgg16(t, nchw(tr, x), 2)
  assert rel_err(out["main"], main) < TOL and rel_err(out["features"], fc7) < TOL


def test_fcn8s_parity(tr):
  """LSD-seg FCN8s names, random (non-bilinear) transposed-conv kernels to pin ConvTranspose2d semantics."""
  fc = 256  # official 4096: only the width of fc6/fc7 differs
  sd = ok.randomize(ok.fcn8s_keys(fc_dim=fc), seed=6)
  v, rep = it.import_state_dict("fcn8s_vgg16", sd, fc_dim=fc)
  assert rep.unused == [] and rep.missing == []
  x = image(h=49, w=67)
  out = it.make_model("fcn8s_vgg16", fc_dim=fc).apply(v, jnp.asarray(x))
  t = tr.tensors(sd)
  with tr.torch.no_grad():
    refs = tr.fcn8s(t, nchw(tr, x))
  for name, ref in zip(("main", "fc7", "pool4", "pool3"), refs):
    assert rel_err(out[name], ref) < TOL, name


def test_fcn8s_from_vgg16_reshapes_fc_and_inits_bilinear(tr):
  """vgg16_from_caffe.pth: fc6/fc7 are the ImageNet Linear weights `.view`ed as convs (copy_params_from_vgg16)."""
  fc = 64
  sd = ok.randomize(ok.vgg16_keys(fc_dim=fc), seed=7)
  v, _ = it.import_state_dict("fcn8s_vgg16", sd, fc_dim=fc)
  torch = tr.torch
  fc6 = torch.from_numpy(sd["classifier.0.weight"]).view(fc, 512, 7, 7).numpy()
  np.testing.assert_array_equal(v["params"]["fc6"]["conv"]["kernel"], fc6.transpose(2, 3, 1, 0))
  fc7 = torch.from_numpy(sd["classifier.3.weight"]).view(fc, fc, 1, 1).numpy()
  np.testing.assert_array_equal(v["params"]["fc7"]["conv"]["kernel"], fc7.transpose(2, 3, 1, 0))
  # The fresh (frozen) upscore8 is torchfcn's get_upsampling_weight, and upsamples as ConvTranspose2d does.
  x = np.random.default_rng(0).standard_normal((1, 3, 4, 19)).astype(np.float32)
  ours, init = ConvTranspose(19, 16, 8).init_with_output(jax.random.key(0), jnp.asarray(x))
  k = np.asarray(init["params"]["kernel"])
  f = 1 - np.abs(np.arange(16) - 7.5) / 8
  np.testing.assert_allclose(k[:, :, 3, 3], np.outer(f, f), rtol=1e-6)
  assert np.count_nonzero(k) == 16 * 16 * 19
  w = torch.from_numpy(k.transpose(2, 3, 0, 1).copy())
  assert rel_err(ours, torch.nn.functional.conv_transpose2d(nchw(tr, x), w, None, 8)) < TOL


def _d_reference(torch, d, x, size):
  """FADA PixelDiscriminator.forward (core/models/discriminator.py) on a raw state_dict, NCHW."""
  F = torch.nn.functional
  conv = lambda h, n: F.conv2d(h, d[f"{n}.weight"], d[f"{n}.bias"], padding=1)
  h = F.leaky_relu(conv(F.leaky_relu(conv(x, "D.0"), 0.2), "D.2"), 0.2)
  out = torch.cat((conv(h, "cls1"), conv(h, "cls2")), dim=1)
  return F.interpolate(out, size=size, mode="bilinear", align_corners=True)


@pytest.mark.parametrize("arch", ["deeplabv2_resnet101_tv", "deeplabv2_vgg16"])
def test_fada_pth_imports_discriminator_as_d_main(tr, tmp_path, capsys, arch):
  """model_D of a FADA .pth -> discriminators/d_main: OIHW -> HWIO, same forward as FADA's, written by the CLI."""
  from uda_jax.models.discriminators import PixelDiscriminator  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  torch, cin, ndf, k = tr.torch, (2048 if arch.endswith("_tv") else 1024), 16, 5
  if arch.endswith("_tv"):
    sd = ok.aspp_keys(ok.resnet_keys(BLOCKS), "classifier", 2048, k)
  else:
    sd = {f"feature_extractor.backbone.{n.removeprefix('features.')}": v
          for n, v in ok.deeplab_vgg16_keys(k).items() if n.startswith("features.") and int(n.split(".")[1]) < 5}
  sd = ok.randomize(sd, seed=8)
  d = ok.randomize(pixel_d_keys({}, "model_D", cin, ndf, k), seed=9)
  path = tmp_path / "model_iter040000.pth"
  torch.save(fada_checkpoint(torch, sd, d), path)
  kw = dict(blocks=BLOCKS) if arch.endswith("_tv") else {}
  v, rep = it.import_file(arch, str(path), k, **kw)
  assert rep.unused == [] and rep.source.startswith("fada")
  assert set(rep.ignored) == {"iteration", "optimizer_fea", "optimizer_D"}
  assert not any(n.startswith("model_D") for n in rep.unused_by_design)
  got = v["discriminators"]["d_main"]
  for name, p in D_PATHS.items():
    mod, _, leaf = p.split("/")
    want = d[f"model_D.{name}"].transpose(2, 3, 1, 0) if leaf == "kernel" else d[f"model_D.{name}"]
    np.testing.assert_array_equal(got[mod]["conv"][leaf], want, err_msg=name)
    assert rep.mapped[f"model_D.module.{name}"] == f"discriminators/d_main/{p}"

  x = np.random.default_rng(3).standard_normal((1, 5, 7, cin)).astype(np.float32)
  ours = PixelDiscriminator(classes_per_domain=k, width=ndf).apply({"params": got}, jnp.asarray(x), (9, 13))
  with torch.no_grad():
    ref = _d_reference(torch, tr.tensors({n.removeprefix("model_D."): a for n, a in d.items()}), nchw(tr, x),
                       (9, 13))
  assert rel_err(ours, ref) < TOL

  out = tmp_path / "imported"
  cli = ["--arch", arch, "--input", str(path), "--output", str(out), "--num-classes", str(k)]
  assert it.main(cli) == 0
  printed = capsys.readouterr().out
  assert "discriminators imported" in printed and "d_main: FADA PixelDiscriminator" in printed
  restored = ocp.StandardCheckpointer().restore(str(out))
  for mod in ("D_0", "D_2", "cls1", "cls2"):
    for leaf in ("kernel", "bias"):
      np.testing.assert_array_equal(restored["discriminators"]["d_main"][mod]["conv"][leaf], got[mod]["conv"][leaf])
  some = next(iter(rep.mapped.values())).split("/")
  assert some[0] == "params" and some[1] in restored["params"]  # the segmenter too
  # Without model_D: the directory has no discriminators entry.
  torch.save(fada_checkpoint(torch, sd), path)
  assert it.main(cli + ["--force"]) == 0
  assert "discriminators" not in ocp.StandardCheckpointer().restore(str(out))
