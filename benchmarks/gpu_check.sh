#!/usr/bin/env bash
# One short GPU session (a lent GPU is available for minutes): training speed and memory of
# lite and caps through the real training loop, then a time-limited lite_wide training run.
#   DATA=<folder with sacre_coeur/ freiburg_sequence/ real_pairs/> OUT=<results> bash benchmarks/gpu_check.sh
# Env: SPEED_ITERS (default 150), TRAIN_MIN (default 5.5), WORKERS (default 12).
set -uo pipefail
DATA=${DATA:-../shared/data}
OUT=${OUT:-outputs/gpu_check}
SPEED_ITERS=${SPEED_ITERS:-150}
TRAIN_MIN=${TRAIN_MIN:-5.5}
WORKERS=${WORKERS:-12}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
$PY benchmarks/train_speed.py --device cuda --backbones lite caps --iters "$SPEED_ITERS" --warmup 10 \
    --batch_size 16 --num_workers "$WORKERS" --json "$OUT/train_speed.json" 2>&1 | tr '\r' '\n' \
    | grep -v -E "it/s\]|kNN graph|s/it\]" | tee "$OUT/train_speed.log"
$PY -m hndesc_loc.train --config configs/train/lite_wide.yaml output_dir="$OUT/lite_wide" device=cuda \
    num_workers="$WORKERS" threads=4 time_limit_min="$TRAIN_MIN" iterations=6000 optim.lr_step=4000 \
    val_every=1000 checkpoint_every=500 \
    "data.folders=[$DATA/sacre_coeur,$DATA/freiburg_sequence]" validation.real_pairs="$DATA/real_pairs" 2>&1 | tr '\r' '\n' \
    | grep -v -E "it/s\]|kNN graph|s/it\]" | tail -30 | tee "$OUT/train.log"
tail -5 "$OUT/lite_wide/log.csv"
