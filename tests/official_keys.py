"""State-dict key names and shapes of the official PyTorch models, and random values for them (numpy only).

Names follow the released checkpoints (see docs in uda_jax/tools/torch_keys.py); depth can be reduced for
speed, the naming stays the official one.
"""

import numpy as np

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _bn(shapes, name, c, counter):
  for leaf in ("weight", "bias", "running_mean", "running_var"):
    shapes[f"{name}.{leaf}"] = (c,)
  if counter:
    shapes[f"{name}.num_batches_tracked"] = ()


def aspp_keys(shapes, prefix, cin, num_classes, branches=4):
  for b in range(branches):
    shapes[f"{prefix}.conv2d_list.{b}.weight"] = (num_classes, cin, 3, 3)
    shapes[f"{prefix}.conv2d_list.{b}.bias"] = (num_classes,)
  return shapes


def resnet_keys(blocks=(3, 4, 23, 3), prefix="", counter=False, fc=False):
  """DeeplabMulti / torchvision ResNet backbone keys (both layouts share names and shapes)."""
  s = {}
  s[f"{prefix}conv1.weight"] = (64, 3, 7, 7)
  _bn(s, f"{prefix}bn1", 64, counter)
  inplanes = 64
  for i, n in enumerate(blocks):
    planes = 64 * 2**i
    for j in range(n):
      p = f"{prefix}layer{i + 1}.{j}"
      s[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
      _bn(s, f"{p}.bn1", planes, counter)
      s[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
      _bn(s, f"{p}.bn2", planes, counter)
      s[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
      _bn(s, f"{p}.bn3", planes * 4, counter)
      if j == 0:
        s[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
        _bn(s, f"{p}.downsample.1", planes * 4, counter)
      inplanes = planes * 4
  if fc:
    s[f"{prefix}fc.weight"] = (1000, 2048)
    s[f"{prefix}fc.bias"] = (1000,)
  return s


def vgg16_keys(fc_dim=4096, classes=1000):
  """torchvision `vgg16()` keys: features.{conv idx}, classifier.{0,3,6} (Linear)."""
  s, idx, cin = {}, 0, 3
  for v in VGG16_CFG:
    if v == "M":
      idx += 1
      continue
    s[f"features.{idx}.weight"], s[f"features.{idx}.bias"] = (v, cin, 3, 3), (v,)
    idx, cin = idx + 2, v
  for i, (o, n) in zip((0, 3, 6), ((fc_dim, 512 * 49), (fc_dim, fc_dim), (classes, fc_dim))):
    s[f"classifier.{i}.weight"], s[f"classifier.{i}.bias"] = (o, n), (o,)
  return s


def deeplab_vgg16_keys(num_classes=19, branches=4):
  """AdaptSegNet DeeplabVGG keys: features re-indexed without pool4 (conv5 at 23/25/27), fc6 29, fc7 31."""
  s = {k: v for k, v in vgg16_keys().items() if k.startswith("features.") and int(k.split(".")[1]) < 23}
  for i, cin in zip((23, 25, 27), (512, 512, 512)):
    s[f"features.{i}.weight"], s[f"features.{i}.bias"] = (512, cin, 3, 3), (512,)
  s["features.29.weight"], s["features.29.bias"] = (1024, 512, 3, 3), (1024,)
  s["features.31.weight"], s["features.31.bias"] = (1024, 1024, 3, 3), (1024,)
  return aspp_keys(s, "classifier", 1024, num_classes, branches)


def fcn8s_keys(num_classes=19, fc_dim=4096):
  """LSD-seg FCN8s module names."""
  s, stage, i, cin = {}, 1, 1, 3
  for v in VGG16_CFG:
    if v == "M":
      stage, i = stage + 1, 1
      continue
    s[f"conv{stage}_{i}.weight"], s[f"conv{stage}_{i}.bias"] = (v, cin, 3, 3), (v,)
    i, cin = i + 1, v
  s["fc6.weight"], s["fc6.bias"] = (fc_dim, 512, 7, 7), (fc_dim,)
  s["fc7.weight"], s["fc7.bias"] = (fc_dim, fc_dim, 1, 1), (fc_dim,)
  for name, c in (("score_fr", fc_dim), ("score_pool3", 256), ("score_pool4", 512)):
    s[f"{name}.weight"], s[f"{name}.bias"] = (num_classes, c, 1, 1), (num_classes,)
  for name, k in (("upscore2", 4), ("upscore_pool4", 4), ("upscore8", 16)):
    s[f"{name}.weight"] = (num_classes, num_classes, k, k)
  return s


def randomize(shapes, seed=0):
  """Values that keep activations O(1) through the net: He-scaled weights, plausible BN statistics."""
  rng = np.random.default_rng(seed)
  out = {}
  for k, shape in shapes.items():
    leaf = k.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
      out[k] = np.array(7, np.int64)
    elif leaf == "running_var" or (leaf == "weight" and len(shape) == 1):
      out[k] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif len(shape) == 1:
      out[k] = rng.normal(0, 0.1, shape).astype(np.float32)
    else:
      fan_in = int(np.prod(shape[1:]))
      out[k] = (rng.standard_normal(shape, np.float32) * np.sqrt(2.0 / fan_in)).astype(np.float32)
  return out
