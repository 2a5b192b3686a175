#!/usr/bin/env bash
# Ablation of the detection head's objective (same data, seed and budget per variant):
#   rep_rel:  R2D2 repeatability (cosim + peaky) + AP reliability   (the shipped choice)
#   rep_only: repeatability alone (reliability constant 1)
# Then: python benchmarks/descriptor_quality.py --only_weights \
#         --joint_weights runs/det_ablation_rep_rel/best_val.pt runs/det_ablation_rep_only/best_val.pt
set -euo pipefail
ITERS=${ITERS:-600}
for variant in rep_rel rep_only; do
  weight=1.0; [ "$variant" = rep_only ] && weight=0
  OMP_WAIT_POLICY=PASSIVE python -m hndesc_loc.train --config configs/train/lite_joint.yaml \
    output_dir=runs/det_ablation_$variant iterations=$ITERS val_every=150 \
    detection.reliability_weight=$weight optim.lr_step=$((ITERS * 3 / 4))
done
