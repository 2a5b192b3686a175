"""Export a training run as shipped weights with a model card written from the run's own files.

    python -m hndesc_loc.train.model_card --run runs/lite --output hndesc_loc/weights/hndesc_lite.pt \
        --command "python -m hndesc_loc.train --config configs/train/lite.yaml ..." [--notes notes.md]
"""
import csv
from pathlib import Path

import yaml

from .trainer import export_weights
from ..utils.cli import Parser, run as run_cli


VAL_TEXT = {"val_ap": "exact AP, in-pair negatives",
            "val_correct": "correct (3 px) mutual matches per pair, 300 keypoints per 256 px crop"}


def loss_line(conf: dict) -> str:
    if conf.get("stage") == "detector":
        d = conf["detection"]
        return (f"- Stage `detector`: detection head trained on the frozen network `{conf['init_weights']}` "
                f"(descriptor and global head unchanged). Loss: R2D2 repeatability (cosine similarity of the "
                f"warped score maps, weight {d['cosim_weight']}, + peakiness, weight {d['peaky_weight']}, "
                f"{d['patch_size']} px patches) + reliability from the descriptor's AP (kappa {d['kappa']}, "
                f"weight {d['reliability_weight']}, {d['num_points']} points per crop, negatives "
                f"`{conf['loss']['mining']}`).")
    return (f"- Loss: listwise AP ({conf['loss']['nq']} bins), mining `{conf['loss']['mining']}` "
            f"(k={conf['loss']['num_hard_negatives']} hardest from other crops), coarse-to-fine batches: "
            f"{conf['coarse_to_fine']['enabled']} (kNN k={conf['coarse_to_fine']['k']}, rebuilt every "
            f"{conf['coarse_to_fine']['rebuild_every']} it); global head: InfoNCE, weight {conf['loss']['global_weight']}.")


def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--command", required=True, help="the training command, as the card should quote it")
    p.add_argument("--checkpoint", default="best_val.pt", help="checkpoint of the run to export")
    p.add_argument("--notes", type=Path, help="markdown appended to the card (measured figures)")
    p.add_argument("--card", type=Path, help="card path (default: MODEL_CARD.md next to --output)")
    a = p.parse_args(argv)
    small = export_weights(a.run / a.checkpoint, a.output)
    rows = list(csv.DictReader(open(a.run / "log.csv")))
    val_name = "val_correct" if "val_correct" in rows[0] else "val_ap"
    val = [(int(r["step"]), float(r[val_name])) for r in rows if r[val_name]]
    elapsed = float(rows[-1]["elapsed_s"])
    conf = small["config"]
    params = sum(v.numel() for k, v in small["model"].items() if v.dtype.is_floating_point and "running" not in k)
    card = [
        f"# Model card: {a.output.name}",
        "",
        f"- Network: HNDesc `{small['backbone']}` backbone + global head"
        f"{' + detection head' if conf.get('stage') == 'detector' else ''}, {params / 1e6:.2f} M parameters, "
        f"{a.output.stat().st_size / 1e6:.1f} MB.",
        f"- Checkpoint: `{a.checkpoint}` of the run, step {small['step']} (best {VAL_TEXT[val_name]} "
        f"{small['val_ap']:.4f}).",
        f"- Training: {rows[-1]['step']} iterations in {elapsed / 60:.1f} min on a 2-core CPU "
        f"({int(rows[-1]['step']) / elapsed:.2f} it/s, shared with other work), batch {conf['batch_size']} pairs of "
        f"{conf['data']['crop_size']} px crops, "
        + (f"{conf['detection']['num_points']} uniform points per crop." if conf.get("stage") == "detector"
           else f"{conf['data']['num_keypoints']} keypoints per crop."),
        loss_line(conf),
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
        f"## Validation: {VAL_TEXT[val_name]} (fixed validation pairs)",
        f"| step | {val_name} |",
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
    card_path = a.card or a.output.parent / "MODEL_CARD.md"
    card_path.write_text("\n".join(card) + "\n")
    print(f"Wrote {a.output} and {card_path}")


if __name__ == "__main__":
    run_cli(main)
