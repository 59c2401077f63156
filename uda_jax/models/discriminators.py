"""AdaptSegNet's fully-convolutional discriminator (Sec. 5): five 4x4 stride-2 convs, LeakyReLU 0.2, no norm.

Fed the softmax of the upsampled segmentation logits (output space) or backbone features ("Ours (feature)");
the official code does not upsample its output. PyTorch default init, as the official code leaves it.
"""

from typing import Sequence

import flax.linen as nn

from uda_jax.models.layers import Conv, leaky_relu, torch_kernel_init


class FCDiscriminator(nn.Module):
  channels: Sequence[int] = (64, 128, 256, 512)

  @nn.compact
  def __call__(self, x):
    for i, c in enumerate(self.channels):
      x = leaky_relu(Conv(c, 4, stride=2, padding=1, use_bias=True, kernel_init=torch_kernel_init,
                          name=f"conv{i + 1}")(x))
    return Conv(1, 4, stride=2, padding=1, use_bias=True, kernel_init=torch_kernel_init, name="classifier")(x)
