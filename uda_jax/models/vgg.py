"""DeepLab-v2 on VGG16 (AdaptSegNet `model/deeplab_vgg.py`, FADA `vgg_feature_extractor`).

torchvision VGG16 convs with pool4 and pool5 removed, conv5_x at dilation 2, then fc6/fc7 as new 3x3
dilation-4 convs of 1024 channels (+ReLU, no dropout) and one ASPP classifier: output stride 8,
single-level as the official code. `multi_level` adds a low-level ASPP decoder on conv5_3 ('classifier_aux',
JAL + WTM's VGG16 rows: "we add ASPP decoder on conv5 of VGG16"). Pools are torchvision's MaxPool2d(2, 2)
(floor mode, no padding).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from uda_jax.models.deeplab import ASPPClassifier
from uda_jax.models.layers import Conv, max_pool, param_dtype, torch_kernel_init

# (channels, convs) per VGG16 stage; conv names are conv{stage}_{i} (Caffe / FCN naming).
VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
VGG16_CONV_NAMES = tuple(f"conv{s + 1}_{i + 1}" for s, (_, n) in enumerate(VGG16_STAGES) for i in range(n))


class DeepLabV2VGG16(nn.Module):
  """Returns {'main': logits at stride 8 ('classifier'), 'features': fc7 output (1024 ch)}, and with
  multi_level {'aux': logits of 'classifier_aux', 'features_aux': conv5_3 output (512 ch)}, all float32."""

  num_classes: int = 19
  aspp_dilations: Sequence[int] = (6, 12, 18, 24)
  aspp_branches: int = 2  # official AdaptSegNet sums only the first two (see ASPPClassifier); FADA: 4
  dtype: Any = jnp.float32
  multi_level: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no BatchNorm / dropout
    conv = lambda c, d, name: Conv(c, 3, padding=d, dilation=d, use_bias=True, kernel_init=torch_kernel_init,
                                   dtype=self.dtype, name=name)
    x = x.astype(self.dtype)
    head = lambda name: ASPPClassifier(self.num_classes, tuple(self.aspp_dilations), self.aspp_branches,
                                       self.dtype, name=name)
    f32 = lambda t: t.astype(param_dtype(self.dtype))
    out = {}
    for s, (c, n) in enumerate(VGG16_STAGES):
      d = 2 if s == 4 else 1
      for i in range(n):
        x = nn.relu(conv(c, d, f"conv{s + 1}_{i + 1}")(x))
      if s < 3:  # pool1..pool3 only
        x = max_pool(x, 2, 2, 0)
    if self.multi_level:
      out = {"aux": f32(head("classifier_aux")(x)), "features_aux": f32(x)}
    x = nn.relu(conv(1024, 4, "fc6")(x))
    x = nn.relu(conv(1024, 4, "fc7")(x))
    return {"main": f32(head("classifier")(x)), "features": f32(x), **out}
