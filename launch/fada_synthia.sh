#!/usr/bin/env bash
# FADA's SYNTHIA -> Cityscapes recipe for one backbone (Table 2: source only, the binary-discriminator baseline,
# FADA = adversarial + self-distillation; 16-class mIoU and 13-class mIoU*). Restartable.
#   bash launch/fada_synthia.sh ROOT ResNet-101|VGG-16 WEIGHTS [overrides]
# WEIGHTS: the backbone's ImageNet weights imported with import_torch (deeplabv2_resnet101_tv / deeplabv2_vgg16).
set -euo pipefail
root=$1; backbone=$2; weights=$3; shift 3
python -m uda_jax.tools.tables configs/fada.py --table 2 --match "$backbone" --run "$root" \
  -- --config.init_from="$weights" "$@"
python -m uda_jax.tools.tables configs/fada.py --table 2 --match "$backbone" --collect "$root"
