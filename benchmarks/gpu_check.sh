#!/usr/bin/env bash
# One short GPU session (a lent GPU is available for minutes): training speed and memory of
# lite and caps through the real training loop, then a time-limited training run (default: the
# shipped effnet_std network continued from its file; the device has no package index, so not from ImageNet).
#   DATA=<folder with sacre_coeur/ freiburg_sequence/ real_pairs/> OUT=<results> bash benchmarks/gpu_check.sh
# Env: DEVICE (default cuda), SPEED_ITERS (default 150; 0 skips the speed part), TRAIN_MIN (default 5.5), WORKERS (default 12),
#      CONFIG (default configs/train/effnet_std.yaml), INIT (init_weights; default the shipped effnet_std file, '' for the config's),
#      EXTRA (more trainer overrides, space-separated key=value), KEEP_SNAPSHOTS (default 3: that many of the
#      run's snapshots before its last step, evenly spaced, come back when EXTRA sets snapshot_every;
#      with SPEED_ITERS > 0, 1: the device returns at most 8 files).
# Ends with fp16 exports of the run's best and latest weights in $OUT (small enough to come back);
# the device returns at most 8 files, so everything kept lies flat in $OUT and $OUT/snapshots.
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
EXTRA=${EXTRA:-}
KEEP_SNAPSHOTS=${KEEP_SNAPSHOTS:-3}
DEVICE=${DEVICE:-cuda}   # cpu: a smoke test of this script here
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
PROGRESS='(it/s|s/it)[],]|kNN graph|\[A'   # progress-bar lines, left out of the logs that come back
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/train.log"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/train.log"
if [ "$SPEED_ITERS" -gt 0 ]; then
  $PY benchmarks/train_speed.py --device cuda --backbones lite caps --iters "$SPEED_ITERS" --warmup 10 \
      --batch_size 16 --num_workers "$WORKERS" --json "$OUT/train_speed.json" 2>&1 | tr '\r' '\n' \
      | grep -v -E "$PROGRESS" | tee "$OUT/train_speed.log"
fi
$PY -m hndesc_loc.train --config "$CONFIG" output_dir="$OUT/run" device="$DEVICE" \
    num_workers="$WORKERS" threads=4 time_limit_min="$TRAIN_MIN" iterations=6000 optim.lr_step=4000 \
    val_every=1000 checkpoint_every=500 ${INIT:+init_weights=$INIT} \
    "data.folders=[$DATA/sacre_coeur,$DATA/freiburg_sequence]" validation.real_pairs="$DATA/real_pairs" $EXTRA 2>&1 | tr '\r' '\n' \
    | grep -v -E "$PROGRESS" | tail -30 | tee -a "$OUT/train.log"
train_rc=${PIPESTATUS[0]}
if [ "$train_rc" -ne 0 ] || [ ! -f "$OUT/run/latest.pt" ]; then
  echo "gpu_check.sh: training failed (exit $train_rc; see $OUT/train.log); nothing exported." | tee -a "$OUT/train.log"
  exit 1
fi
tail -5 "$OUT/run/log.csv"
for w in best_val latest; do
  $PY -m hndesc_loc.train.export --checkpoint "$OUT/run/$w.pt" --output "$OUT/${w}_fp16.pt" --half
done
# latest.pt (with the optimiser state) is dropped: an effnet one is over the device's 16 MB per
# returned file. A continuation starts from latest_fp16.pt (init_weights; not bit-identical).
# Snapshots (already fp16): KEEP_SNAPSHOTS evenly spaced ones before the last (latest_fp16.pt is the end).
if [ -d "$OUT/run/snapshots" ]; then
  mkdir -p "$OUT/snapshots"
  $PY - "$OUT/run/snapshots" "$OUT/snapshots" "$KEEP_SNAPSHOTS" <<'PYEOF'
import shutil, sys
from pathlib import Path
src, dst, keep = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
files = sorted(src.glob("step*.pt"))
picked = sorted({files[max(round((i + 1) * len(files) / (keep + 1)) - 1, 0)] for i in range(keep)}) if files and keep else []
for f in picked:
    shutil.move(str(f), str(dst / f.name))
print("snapshots kept:", [f.name for f in picked], "of", len(files))
PYEOF
fi
mv "$OUT/run/log.csv" "$OUT/run/config.json" "$OUT/" 2>/dev/null
rm -rf "$OUT/run"
ls -la "$OUT" "$OUT/snapshots" 2>/dev/null
