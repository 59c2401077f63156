"""Reference forwards of the official models, written with torch.nn.functional on raw state_dicts (NCHW).

Written from the official code's structure (AdaptSegNet deeplab_multi.py / deeplab_vgg.py, FADA resnet +
FrozenBatchNorm2d + ASPP_Classifier_V2, LSD-seg FCN8s), independently of uda_jax.
"""

import torch
import torch.nn.functional as F

from official_keys import VGG16_CFG


def tensors(sd):
  return {k: torch.from_numpy(v) for k, v in sd.items()}


def bn_eval(sd, eps=1e-5):
  return lambda n, h: F.batch_norm(h, sd[f"{n}.running_mean"], sd[f"{n}.running_var"], sd[f"{n}.weight"],
                                   sd[f"{n}.bias"], False, 0.1, eps)


def bn_frozen_no_eps(sd):
  """FADA FrozenBatchNorm2d: x * w * rsqrt(var) + (b - mean * w * rsqrt(var))."""
  def f(n, h):
    scale = sd[f"{n}.weight"] * sd[f"{n}.running_var"].rsqrt()
    shift = sd[f"{n}.bias"] - sd[f"{n}.running_mean"] * scale
    return h * scale[None, :, None, None] + shift[None, :, None, None]
  return f


def bn_train(sd, running, eps=1e-5):
  """Batch statistics; updates the clones in `running` (name -> [mean, var]) as model.train() does."""
  def f(n, h):
    if n not in running:
      running[n] = [sd[f"{n}.running_mean"].clone(), sd[f"{n}.running_var"].clone()]
    m, v = running[n]
    return F.batch_norm(h, m, v, sd[f"{n}.weight"], sd[f"{n}.bias"], True, 0.1, eps)
  return f


def resnet(sd, x, layout, blocks, bn):
  """Returns (layer3, layer4). caffe: stride on conv1, ceil pool, all layer3/4 blocks dilated 2/4;
  torchvision (replace_stride_with_dilation=[F, T, T]): stride on conv2, floor pool, first blocks 1/2."""
  relu = F.relu
  h = relu(bn("bn1", F.conv2d(x, sd["conv1.weight"], None, 2, 3)))
  h = F.max_pool2d(h, 3, 2, 1, ceil_mode=layout == "caffe")
  outs = []
  for i, n in enumerate(blocks):
    stride = 2 if i == 1 else 1
    for j in range(n):
      p = f"layer{i + 1}.{j}"
      if layout == "caffe":
        d = (1, 1, 2, 4)[i]
        s1, s2 = (stride if j == 0 else 1), 1
      else:
        d = (1, 1, 1, 2)[i] if j == 0 else (1, 1, 2, 4)[i]
        s1, s2 = 1, (stride if j == 0 else 1)
      out = relu(bn(f"{p}.bn1", F.conv2d(h, sd[f"{p}.conv1.weight"], None, s1)))
      out = relu(bn(f"{p}.bn2", F.conv2d(out, sd[f"{p}.conv2.weight"], None, s2, d, d)))
      out = bn(f"{p}.bn3", F.conv2d(out, sd[f"{p}.conv3.weight"], None))
      if f"{p}.downsample.0.weight" in sd:
        h = bn(f"{p}.downsample.1", F.conv2d(h, sd[f"{p}.downsample.0.weight"], None, stride))
      h = relu(out + h)
    outs.append(h)
  return outs[2], outs[3]


def aspp(sd, prefix, x, branches, dilations=(6, 12, 18, 24)):
  out = 0
  for b in range(branches):
    d = dilations[b]
    out = out + F.conv2d(x, sd[f"{prefix}.conv2d_list.{b}.weight"], sd[f"{prefix}.conv2d_list.{b}.bias"], 1, d, d)
  return out


def deeplab_vgg16(sd, x, branches):
  """DeeplabVGG: vgg16 features minus pool4 (23) and pool5 (30), conv5 (new 23/25/27) dilation 2,
  fc6 (29) / fc7 (31) 3x3 dilation 4, each + ReLU; then the ASPP classifier."""
  ops, idx = [], 0
  for v in VGG16_CFG:
    ops += [("pool", idx)] if v == "M" else [("conv", idx), ("relu", idx + 1)]
    idx += 1 if v == "M" else 2
  ops = [o for o in ops if o[1] not in (23, 30)]
  ops = [(kind, new) for new, (kind, _) in enumerate(ops)]  # nn.Sequential renumbers
  h = x
  for kind, i in ops:
    if kind == "conv":
      d = 2 if i in (23, 25, 27) else 1
      h = F.conv2d(h, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], 1, d, d)
    elif kind == "relu":
      h = F.relu(h)
    else:
      h = F.max_pool2d(h, 2, 2)
  for i in (29, 31):
    h = F.relu(F.conv2d(h, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], 1, 4, 4))
  return aspp(sd, "classifier", h, branches), h


def fcn8s(sd, x):
  """LSD-seg FCN8s forward in eval mode (Dropout2d = identity). Returns (score, fc7, pool4, pool3)."""
  c = lambda n, h, p=0: F.conv2d(h, sd[f"{n}.weight"], sd[f"{n}.bias"], 1, p)
  h, stage, i = x, 1, 1
  for v in VGG16_CFG:
    if v == "M":
      h = F.max_pool2d(h, 2, 2, ceil_mode=True)
      if stage == 3:
        pool3 = h
      elif stage == 4:
        pool4 = h
      stage, i = stage + 1, 1
      continue
    h = F.relu(c(f"conv{stage}_{i}", h, 100 if stage == i == 1 else 1))
    i += 1
  h = F.relu(c("fc6", h))
  fc7 = F.relu(c("fc7", h))
  up2 = F.conv_transpose2d(c("score_fr", fc7), sd["upscore2.weight"], None, 2)
  h = up2 + c("score_pool4", pool4)[:, :, 5:5 + up2.shape[2], 5:5 + up2.shape[3]]
  up4 = F.conv_transpose2d(h, sd["upscore_pool4.weight"], None, 2)
  h = up4 + c("score_pool3", pool3)[:, :, 9:9 + up4.shape[2], 9:9 + up4.shape[3]]
  h = F.conv_transpose2d(h, sd["upscore8.weight"], None, 8)
  return h[:, :, 31:31 + x.shape[2], 31:31 + x.shape[3]], fc7, pool4, pool3
