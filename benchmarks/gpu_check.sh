#!/usr/bin/env bash
# One short GPU session (a lent GPU is available for minutes): training speed and memory of
# lite and caps through the real training loop, then a time-limited training run (default: the
# shipped effnet_std network continued from its file; the device has no package index, so not from ImageNet).
#   DATA=<folder with sacre_coeur/ freiburg_sequence/ real_pairs/> OUT=<results> bash benchmarks/gpu_check.sh
# Env: DEVICE (default cuda), SPEED_ITERS (default 150; 0 skips the speed part), TRAIN_MIN (default 5.5), WORKERS (default 12),
#      CONFIG (default configs/train/effnet_std.yaml), INIT (init_weights; default the shipped effnet_std file, '' for the config's).
# Ends with fp16 exports of the run's best and latest weights in $OUT (small enough to come back).
# The trainer drops the start file's learned whitening; learn the new one on the CPU afterwards:
#   python -m hndesc_loc.train.whitening --weights $OUT/latest_fp16.pt --config $CONFIG --output W
set -uo pipefail
DATA=${DATA:-../shared/data}
OUT=${OUT:-outputs/gpu_check}
SPEED_ITERS=${SPEED_ITERS:-150}
TRAIN_MIN=${TRAIN_MIN:-5.5}
WORKERS=${WORKERS:-12}
CONFIG=${CONFIG:-configs/train/effnet_std.yaml}
INIT=${INIT-hndesc_loc/weights/hndesc_effnet_std.pt}
DEVICE=${DEVICE:-cuda}   # cpu: a smoke test of this script here
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
if [ "$SPEED_ITERS" -gt 0 ]; then
  $PY benchmarks/train_speed.py --device cuda --backbones lite caps --iters "$SPEED_ITERS" --warmup 10 \
      --batch_size 16 --num_workers "$WORKERS" --json "$OUT/train_speed.json" 2>&1 | tr '\r' '\n' \
      | grep -v -E "it/s\]|kNN graph|s/it\]" | tee "$OUT/train_speed.log"
fi
$PY -m hndesc_loc.train --config "$CONFIG" output_dir="$OUT/run" device="$DEVICE" \
    num_workers="$WORKERS" threads=4 time_limit_min="$TRAIN_MIN" iterations=6000 optim.lr_step=4000 \
    val_every=1000 checkpoint_every=500 ${INIT:+init_weights=$INIT} \
    "data.folders=[$DATA/sacre_coeur,$DATA/freiburg_sequence]" validation.real_pairs="$DATA/real_pairs" 2>&1 | tr '\r' '\n' \
    | grep -v -E "it/s\]|kNN graph|s/it\]" | tail -30 | tee "$OUT/train.log"
tail -5 "$OUT/run/log.csv"
for w in best_val latest; do
  $PY -m hndesc_loc.train.export --checkpoint "$OUT/run/$w.pt" --output "$OUT/${w}_fp16.pt" --half
done
# At most 8 files come back from the device: keep latest.pt (optimizer state, to resume), the
# fp16 exports, the log and config; drop the rest.
find "$OUT/run" -type f ! -name latest.pt ! -name log.csv ! -name config.json -delete
ls -la "$OUT" "$OUT/run"
