"""Training speed: iterations/s and peak memory of the descriptor trainer per backbone, through
the real training loop (streaming DataLoader, device, AMP), then a projection of the paper's
schedule (configs/train/caps_paper.yaml: 220k iterations at batch 16) on 1 and 8 GPUs.

    python benchmarks/train_speed.py [--backbones lite lite_wide caps] [--iters 20] [--device auto]
                                     [--batch_size 4] [--num_workers 1] [--json out.json]

Each backbone runs in its own process (peak memory of its own). Timing starts after `--warmup`
iterations (allocation, cuDNN autotuning, worker start). Images: scikit-image photos, so the
benchmark runs anywhere.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PAPER_ITERS, PAPER_BATCH = 220_000, 16   # imelekhov/HNDesc configs/main.yaml


def measure(backbone: str, iters: int, warmup: int, device: str, batch_size: int, num_workers: int, amp: bool) -> dict:
    import torch
    from hndesc_loc.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        conf = {"backbone": backbone, "output_dir": tmp, "device": device, "amp": amp, "batch_size": batch_size,
                "num_workers": num_workers, "iterations": warmup, "val_every": 10 ** 9, "checkpoint_every": 10 ** 9,
                "data": {"builtin": ["astronaut", "coffee", "chelsea", "rocket", "brick", "camera", "grass", "retina"],
                         "num_keypoints": 200, "num_val_pairs": 8, "max_image_size": 512},
                "validation": {"families": []},
                "coarse_to_fine": {"k": 4, "rebuild_every": 10 ** 9}, "threads": torch.get_num_threads()}
        t = Trainer(conf)
        t.validate = lambda: {t.val_name: 0.0}  # the loop's final validation is not training speed
        t.train()
        if t.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t.conf["iterations"] = warmup + iters
        start = time.perf_counter()
        t.train()
        if t.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        out = {"backbone": backbone, "device": str(t.device), "gpu": torch.cuda.get_device_name() if t.device.type == "cuda" else None,
               "batch_size": batch_size, "iters": iters, "it_s": iters / seconds,
               "cpu_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "amp": amp and t.device.type == "cuda", "num_workers": num_workers}
        if t.device.type == "cuda":
            out["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
        return out


def project(r: dict) -> str:
    """Wall time of the paper's schedule from a measured rate (assumptions printed with it)."""
    s_per_it_b16 = PAPER_BATCH / r["batch_size"] / r["it_s"]  # linear in the batch size (assumption)
    one = PAPER_ITERS * s_per_it_b16 / 3600
    # 8 GPUs with DDP, batch 16 per GPU (128 pairs a step), 27.5k steps for the same number of
    # pairs; 85 % scaling efficiency assumed for the gradient all-reduce and the mining all-gather.
    eight = one / 8 / 0.85
    return (f"paper schedule ({PAPER_ITERS} it x batch {PAPER_BATCH}): {one:.1f} h on 1 x {r['gpu'] or 'CPU'}, "
            f"{eight:.1f} h on 8 (assumed: time linear in batch, 85% DDP efficiency, same pairs seen)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=["lite", "lite_wide", "caps"], help="default: %(default)s")
    p.add_argument("--iters", type=int, default=20, help="timed iterations per backbone (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first (default: %(default)s)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: %(default)s")
    p.add_argument("--batch_size", type=int, default=4, help="pairs per step (default: %(default)s)")
    p.add_argument("--num_workers", type=int, default=1, help="DataLoader workers (default: %(default)s)")
    p.add_argument("--no_amp", action="store_true", help="disable bf16 autocast on CUDA")
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args(argv)
    from common import run_isolated

    results = []
    for b in a.backbones:
        _, _, r = run_isolated(measure, b, a.iters, a.warmup, a.device, a.batch_size, a.num_workers, not a.no_amp)
        results.append(r)
        mem = f"GPU peak {r['gpu_peak_mib']:.0f} MiB" if "gpu_peak_mib" in r else f"CPU peak RSS {r['cpu_peak_rss_mib']:.0f} MiB"
        print(f"{b:10s} {r['device']:6s} batch {r['batch_size']:3d} amp={r['amp']!s:5s} workers {r['num_workers']}: "
              f"{r['it_s']:7.2f} it/s  {mem}")
        print(f"           {project(r)}")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
