#!/usr/bin/env bash
# The paper's mining ablation with the same short budget for each variant:
# in_pair vs in_batch (random batches) vs in_batch + coarse-to-fine batches.
# Then: python benchmarks/descriptor_quality.py --only_weights --weights runs/ablation_*/best_val.pt
set -euo pipefail
ITERS=${ITERS:-400}
run() {
  python -m hndesc_loc.train --config configs/train/lite.yaml output_dir=runs/ablation_$1 iterations=$ITERS \
    val_every=100 "${@:2}"
}
run in_pair loss.mining=in_pair coarse_to_fine.enabled=false
run in_batch loss.mining=in_batch coarse_to_fine.enabled=false
run in_batch_c2f loss.mining=in_batch coarse_to_fine.enabled=true coarse_to_fine.rebuild_every=100
