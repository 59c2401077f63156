#!/usr/bin/env bash
# The README's toy table over 3 seeds: source only, AdaptSegNet single- and multi-level, target oracle, and FADA
# (its source-only stage, then its adversarial stage from that checkpoint), with two controls from the same
# checkpoint: source only continued with FADA's source input (colour jitter, class balancing), and FADA's
# binary-discriminator baseline; and JAL + WTM (JAL alone, then JAL with both weight transfer modules), whose
# multi-level baseline is the multi-level AdaptSegNet row; and MRNet, + GenMap (T = 0.9), + GenMap + DisMap; and
# LSD-seg against its own source-only FCN-8s (same network, losses and optimizer without G and D); and two
# combinations no paper ran: GenMap pixel weights on multi-level AdaptSegNet and on FADA's adversarial stage.
#   bash launch/toy_table.sh runs/toy_table        (about 5 minutes a run on a 2-core CPU; an LSD-seg one 45)
#   VARIANTS="fada_src fada" bash launch/toy_table.sh runs/toy_table      (some variants only)
set -euo pipefail
root=${1:-runs/toy_table}
seeds=${SEEDS:-"0 1 2"}
variants=${VARIANTS:-"source_only single_level multi_level oracle fada_src fada fada_src_jitter fada_binary jal jal_wtm mrnet genmap genmap_dismap lsdseg_src lsdseg multi_level_genmap multi_level_genmap_pred fada_genmap"}
declare -A configs=([source_only]="adaptsegnet.py:toy,source_only" [single_level]="adaptsegnet.py:toy,single_level"
                    [multi_level]="adaptsegnet.py:toy" [oracle]="adaptsegnet.py:toy,oracle"
                    [fada_src]="fada.py:toy,src" [fada]="fada.py:toy,adv" [fada_binary]="fada.py:toy,adv,binary"
                    [fada_src_jitter]="fada.py:toy,src" [jal]="jal_wtm.py:toy,jal" [jal_wtm]="jal_wtm.py:toy"
                    [mrnet]="pixel_weighted.py:toy,mrnet" [genmap]="pixel_weighted.py:toy,genmap"
                    [genmap_dismap]="pixel_weighted.py:toy" [lsdseg_src]="lsdseg.py:toy,source_only"
                    [lsdseg]="lsdseg.py:toy" [multi_level_genmap]="adaptsegnet.py:toy,genmap"
                    [multi_level_genmap_pred]="adaptsegnet.py:toy,genmap" [fada_genmap]="fada.py:toy,adv,genmap")
for variant in $variants; do
  for seed in $seeds; do
    dir="$root/$variant/seed$seed"
    [ -f "$dir/eval_final.json" ] && continue
    mkdir -p "$(dirname "$dir")"
    extra=()
    case $variant in
      fada|fada_binary|fada_genmap) extra=(--config.init_from="$root/fada_src/seed$seed") ;;
      multi_level_genmap_pred) extra=(--config.loss.genmap_from=prediction) ;;
      fada_src_jitter) extra=(--config.init_from="$root/fada_src/seed$seed"
                              "--config.data.source_aug.jitter=(0.5,0.5,0.5,0.2)") ;;
    esac
    python -m uda_jax.main --config "configs/${configs[$variant]}" --workdir "$dir" --config.seed="$seed" \
      "${extra[@]}" >"$dir.log" 2>&1 || { echo "failed: $dir (see $dir.log)"; exit 1; }
  done
done
python -m uda_jax.tools.collect_results "$root"
