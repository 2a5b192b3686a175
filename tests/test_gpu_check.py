"""benchmarks/gpu_check.sh, run here on the CPU (DEVICE=cpu): what it returns from a lent GPU must
fit the device's limits (at most 8 files, none deeper than OUT/a/file), and a failed training run must
stop it with a message instead of exporting nothing with a cascade of errors."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_gpu_check(out: Path, data: Path, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "OUT": str(out), "DATA": str(data), "DEVICE": "cpu", "SPEED_ITERS": "0",
            "WORKERS": "0", "PY": sys.executable, **env}
    return subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=600)


def test_gpu_check_returns_few_flat_files(tmp_path, shared_data):
    out = tmp_path / "out"
    r = run_gpu_check(out, shared_data, CONFIG="configs/train/lite.yaml", INIT="", TRAIN_MIN="10",
                      KEEP_SNAPSHOTS="3", EXTRA="iterations=12 batch_size=2 snapshot_every=1 "
                                                "data.num_val_pairs=2 validation.real_pairs=null")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert len(files) <= 8, files
    assert all(f.count("/") <= 1 for f in files), files
    for name in ("train.log", "log.csv", "config.json", "best_val_fp16.pt", "latest_fp16.pt"):
        assert name in files, files
    snaps = sorted(int(f[len("snapshots/step"):-3]) for f in files if f.startswith("snapshots/"))
    steps = [int(line.split(",")[0]) for line in (out / "log.csv").read_text().splitlines()[1:]]
    assert max(steps) == 12
    assert snaps == [3, 6, 9], snaps   # evenly spaced; the end is latest_fp16.pt


def test_gpu_check_stops_when_training_fails(tmp_path):
    out = tmp_path / "out"
    r = run_gpu_check(out, tmp_path, CONFIG="configs/train/no_such_config.yaml")
    assert r.returncode == 1
    assert "training failed" in r.stdout and "no_such_config.yaml" in r.stdout + r.stderr
    assert not list(out.glob("*.pt"))
