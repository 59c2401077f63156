"""FCN-8s "at-once" on VGG16, as LSD-seg lays it out (`torchfcn/models/model_utils.py: FCN8s`).

conv1_1 padded by 100 and ceil-mode pools so that any input size survives fc6 (7x7, no padding); the three
score maps are fused with transposed convs whose outputs are cropped at the official offsets 5, 9 and 31.
LSD-seg initialises every conv to zero (before copying VGG16) and the transposed convs to bilinear
upsampling, and never gives the transposed convs to its optimiser (`util_fns.get_parameters`): they are
frozen here by a stop_gradient (`freeze_upscore`); still mask them from any weight decay.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from uda_jax.models.layers import Conv, ConvTranspose, max_pool, param_dtype
from uda_jax.models.vgg import VGG16_STAGES

_zeros = nn.initializers.zeros


class FCN8s(nn.Module):
  """Returns {'main': logits at input size, 'fc7' (after drop7), 'pool4', 'pool3', 'features' (= fc7)}.

  `fc_dim` is 4096 and `width` (conv1's channels; every stage scales with it) 64 in the official model; smaller
  ones are for tests and the toy. Training needs a 'dropout' rng (Dropout2d: whole channels).
  """

  num_classes: int = 19
  fc_dim: int = 4096
  width: int = 64
  dropout: float = 0.5  # Dropout2d after fc6 and fc7
  random_init: bool = False  # He-normal convs (trained from scratch: the toy) instead of zeros (then VGG16 copied)
  freeze_upscore: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    init = nn.initializers.he_normal() if self.random_init else _zeros
    conv = lambda c, k, name, pad=0, kinit=init: Conv(c, k, padding=pad, use_bias=True, kernel_init=kinit,
                                                      bias_init=_zeros, dtype=self.dtype, name=name)
    up = lambda k, s, name: ConvTranspose(self.num_classes, k, s, self.freeze_upscore, self.dtype, name=name)
    drop = lambda h: nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(h)
    hw = x.shape[1:3]
    h = x.astype(self.dtype)
    for s, (c, n) in enumerate(VGG16_STAGES):
      for i in range(n):
        h = nn.relu(conv(c * self.width // 64, 3, f"conv{s + 1}_{i + 1}", 100 if s == i == 0 else 1)(h))
      h = max_pool(h, 2, 2, 0, ceil_mode=True)
      if s == 2:
        pool3 = h
      elif s == 3:
        pool4 = h
    h = drop(nn.relu(conv(self.fc_dim, 7, "fc6")(h)))
    fc7 = drop(nn.relu(conv(self.fc_dim, 1, "fc7")(h)))

    crop = lambda t, o, size: t[:, o:o + size[0], o:o + size[1]]
    h = up(4, 2, "upscore2")(conv(self.num_classes, 1, "score_fr", kinit=_zeros)(fc7))
    h = h + crop(conv(self.num_classes, 1, "score_pool4", kinit=_zeros)(pool4), 5, h.shape[1:3])
    h = up(4, 2, "upscore_pool4")(h)
    h = h + crop(conv(self.num_classes, 1, "score_pool3", kinit=_zeros)(pool3), 9, h.shape[1:3])
    score = crop(up(16, 8, "upscore8")(h), 31, hw)
    f32 = lambda t: t.astype(param_dtype(self.dtype))
    return {"main": f32(score), "fc7": f32(fc7), "pool4": f32(pool4), "pool3": f32(pool3), "features": f32(fc7)}
