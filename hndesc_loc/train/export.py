"""Export a training checkpoint: the project's small format (what `hndesc` confs load; fp16
optional) or the HNDesc release format (`{'state_dict': CapsDesc weights}`, caps only), which
the official code's `CapsDesc.load_network` reads.

    python -m hndesc_loc.train.export --checkpoint runs/caps_paper/best_val.pt --output hndesc_caps.pth --release
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..utils.cli import Parser, run as run_cli
from .trainer import export_weights


def export_release(checkpoint: Path, output: Path) -> dict:
    """{'state_dict': backbone weights} with the official names (conv_coarse included, as in
    the released hndesc_caps_MP_st.pth); other heads are not part of the release format."""
    ckpt = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
    if ckpt.get("backbone") != "caps":
        raise ValueError(f"{checkpoint} is a '{ckpt.get('backbone')}' checkpoint: the release format exists for caps only.")
    state = {k[len("backbone."):]: v.float() for k, v in ckpt["model"].items() if k.startswith("backbone.")}
    out = {"state_dict": state, "step": ckpt.get("step")}
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    torch.save(out, tmp)
    tmp.replace(output)
    return out


def with_detection_head(weights: Path, head_from: Path, output: Path) -> dict:
    """`weights` (a descriptor export) with the detection head of `head_from` (a joint export):
    the starting point of the detector stage for a new descriptor, or, if validation says it
    transfers, a joint model as is."""
    a = torch.load(str(weights), map_location="cpu", weights_only=False)
    b = torch.load(str(head_from), map_location="cpu", weights_only=False)
    if a["backbone"] != b["backbone"]:
        raise ValueError(f"{weights} is '{a['backbone']}', {head_from} is '{b['backbone']}': heads do not transfer.")
    head = {k: v for k, v in b["model"].items() if k.startswith("detection_head.")}
    if not head:
        raise ValueError(f"{head_from} carries no detection head.")
    out = {**a, "model": {**a["model"], **head}, "detection_head_from": str(head_from)}
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, output)
    return out


def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--checkpoint", type=Path, required=True, help="training checkpoint (latest.pt / best_val.pt)")
    p.add_argument("--output", type=Path, required=True, help="file to write")
    p.add_argument("--release", action="store_true", help="HNDesc release format (caps backbone only)")
    p.add_argument("--half", action="store_true", help="store weights as float16 (project format)")
    p.add_argument("--detection_head_from", type=Path, help="joint export whose detection head to add (project format)")
    a = p.parse_args(argv)
    if a.detection_head_from:
        export_weights(a.checkpoint, a.output, half=a.half)
        with_detection_head(a.output, a.detection_head_from, a.output)
    elif a.release:
        export_release(a.checkpoint, a.output)
    else:
        export_weights(a.checkpoint, a.output, half=a.half)
    print(f"Wrote {a.output}")


if __name__ == "__main__":
    run_cli(main)
