"""Export a training run as shipped weights with a model card written from the run's own files.

    python -m hndesc_loc.train.model_card --run runs/lite --output hndesc_loc/weights/hndesc_lite.pt \
        --command "python -m hndesc_loc.train --config configs/train/lite.yaml ..." [--notes notes.md]
"""
import argparse
import csv
from pathlib import Path

import yaml

from .trainer import export_weights


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--command", required=True)
    p.add_argument("--checkpoint", default="best_val.pt")
    p.add_argument("--notes", type=Path, help="markdown appended to the card (measured figures)")
    a = p.parse_args(argv)
    small = export_weights(a.run / a.checkpoint, a.output)
    rows = list(csv.DictReader(open(a.run / "log.csv")))
    val = [(int(r["step"]), float(r["val_ap"])) for r in rows if r["val_ap"]]
    elapsed = float(rows[-1]["elapsed_s"])
    conf = small["config"]
    params = sum(v.numel() for k, v in small["model"].items() if v.dtype.is_floating_point and "running" not in k)
    card = [
        f"# Model card: {a.output.name}",
        "",
        f"- Network: HNDesc `{small['backbone']}` backbone + global head, {params / 1e6:.2f} M parameters, "
        f"{a.output.stat().st_size / 1e6:.1f} MB.",
        f"- Checkpoint: `{a.checkpoint}` of the run, step {small['step']} (best validation AP {small['val_ap']:.4f}).",
        f"- Training: {rows[-1]['step']} iterations in {elapsed / 60:.1f} min on a 2-core CPU "
        f"({int(rows[-1]['step']) / elapsed:.2f} it/s, shared with other work), batch {conf['batch_size']} pairs of "
        f"{conf['data']['crop_size']} px crops, {conf['data']['num_keypoints']} keypoints per crop.",
        f"- Loss: listwise AP ({conf['loss']['nq']} bins), mining `{conf['loss']['mining']}` "
        f"(k={conf['loss']['num_hard_negatives']} hardest from other crops), coarse-to-fine batches: "
        f"{conf['coarse_to_fine']['enabled']} (kNN k={conf['coarse_to_fine']['k']}, rebuilt every "
        f"{conf['coarse_to_fine']['rebuild_every']} it); global head: InfoNCE, weight {conf['loss']['global_weight']}.",
        "- Data (all available offline): training folders " + ", ".join(f"`{f}`" for f in conf["data"]["folders"])
        + "; scikit-image photos " + ", ".join(conf["data"]["builtin"]) + ".",
        "- Validation pairs (fixed, seed 12345): scikit-image " + ", ".join(conf["data"]["val_builtin"])
        + " (also the demo scene's facade textures: never trained on).",
        "- Held out for evaluation: `../shared/data/phototourism_sample_images` (benchmarks/descriptor_quality.py).",
        "- Pairs: random homographies, colour jitter, Reinhard colour transfer "
        f"({conf['data']['transfer_prob']:.0%}) and day-to-night rendering ({conf['data']['night_prob']:.0%}).",
        "",
        "## Command",
        "```bash",
        a.command,
        "```",
        "",
        "## Validation AP (exact AP, in-pair negatives, fixed validation pairs)",
        "| step | val AP |",
        "|---|---|",
        *[f"| {s} | {v:.4f} |" for s, v in val],
        "",
        "## Config",
        "```yaml",
        yaml.safe_dump(conf, sort_keys=False).rstrip(),
        "```",
    ]
    if a.notes:
        card += ["", a.notes.read_text().rstrip()]
    card_path = a.output.parent / "MODEL_CARD.md"
    card_path.write_text("\n".join(card) + "\n")
    print(f"Wrote {a.output} and {card_path}")


if __name__ == "__main__":
    main()
