#!/usr/bin/env bash
# The README's toy table: source only, AdaptSegNet single- and multi-level, target oracle, over 3 seeds.
#   bash launch/toy_table.sh runs/toy_table        (about 5 minutes a run on a 2-core CPU)
set -euo pipefail
root=${1:-runs/toy_table}
seeds=${SEEDS:-"0 1 2"}
declare -A presets=([source_only]=toy,source_only [single_level]=toy,single_level [multi_level]=toy
                    [oracle]=toy,oracle)
for variant in source_only single_level multi_level oracle; do
  for seed in $seeds; do
    dir="$root/$variant/seed$seed"
    [ -f "$dir/eval_final.json" ] && continue
    mkdir -p "$(dirname "$dir")"
    python -m uda_jax.main --config "configs/adaptsegnet.py:${presets[$variant]}" --workdir "$dir" \
      --config.seed="$seed" >"$dir.log" 2>&1 || { echo "failed: $dir (see $dir.log)"; exit 1; }
  done
done
python -m uda_jax.tools.collect_results "$root"
