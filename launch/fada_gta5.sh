#!/usr/bin/env bash
# FADA's whole GTA5 -> Cityscapes recipe (ResNet-101): source only -> fine-grained adversarial -> pseudo-labels ->
# self-distillation -> multi-scale test; the rows of Table 4. Restartable: finished stages are skipped and a
# killed training resumes from its last checkpoint.
#   bash launch/fada_gta5.sh ROOT WEIGHTS [overrides]    (WEIGHTS: import_torch --arch deeplabv2_resnet101_tv
#                                                         of resnet101-5d3b4d8f.pth)
set -euo pipefail
root=$1; weights=$2; shift 2
python -m uda_jax.tools.tables configs/fada.py --table 4 --run "$root" -- --config.init_from="$weights" "$@"
python -m uda_jax.tools.tables configs/fada.py --table 4 --collect "$root"
