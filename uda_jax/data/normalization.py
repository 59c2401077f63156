"""How images are fed to the networks, without TensorFlow (the input pipeline and the jitted steps share it)."""

import enum

import numpy as np

CAFFE_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)  # B, G, R; 0-255 range.
VGG_BGR_MEAN = (103.939, 116.779, 123.68)  # B, G, R: the Caffe VGG16 mean FADA's VGG configs subtract.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalization(str, enum.Enum):
  """How images are fed to the network; must match what the pretrained backbone was trained with."""

  CAFFE_BGR = "caffe_bgr"  # Caffe ResNet / VGG weights: BGR, 0-255, minus the mean.
  VGG_BGR = "vgg_bgr"  # as CAFFE_BGR with the VGG16 mean (FADA's VGG16 configs).
  IMAGENET = "imagenet"  # torchvision weights: RGB / 255, minus mean, over std.
  UNIT = "unit"  # [0, 1] RGB.


_BGR_MEANS = {Normalization.CAFFE_BGR: CAFFE_BGR_MEAN, Normalization.VGG_BGR: VGG_BGR_MEAN}


def to_unit(x, normalization):
  """Network input [..., 3] -> the un-normalised image in [0, 1], in the input's channel order (BGR for the Caffe
  normalisations): what LSD-seg's discriminator sees and its generator reconstructs. Works on jax and numpy arrays."""
  kind = Normalization(normalization)
  if kind in _BGR_MEANS:
    return (x + np.asarray(_BGR_MEANS[kind], np.float32)) / 255.0
  if kind is Normalization.IMAGENET:
    return x * np.asarray(IMAGENET_STD, np.float32) + np.asarray(IMAGENET_MEAN, np.float32)
  return x
