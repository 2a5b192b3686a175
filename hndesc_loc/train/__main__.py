"""python -m hndesc_loc.train --config configs/train/lite.yaml [key=value ...] [--resume] [--show-samples]

The config's `stage` picks what is trained: 'descriptor' (the network, AP loss) or
'detector' (the detection head on a frozen trained network, configs/train/lite_joint.yaml).
A config may start from another one with `base: OTHER.yaml` (path relative to it) and give only
what differs."""
from pathlib import Path

import numpy as np
import yaml

from .. import logger
from ..extract_features import parse_overrides
from ..utils.cli import Parser, run as run_cli


def load_config(path: Path, _chain: tuple = ()) -> dict:
    """The config at `path` as a dict, its `base` (if any) loaded first and updated with it
    (nested dicts key by key, other values replaced). Keys are checked by the trainer's merge."""
    if not path.is_file():
        raise FileNotFoundError(f"Config {path} does not exist.")
    if path.resolve() in _chain:
        raise ValueError(f"Config {path}: its 'base' chain comes back to it; remove the loop.")
    conf = yaml.safe_load(path.read_text()) or {}
    base = conf.pop("base", None)
    return conf if base is None else updated(load_config(path.parent / base, _chain + (path.resolve(),)), conf)


def updated(base: dict, changes: dict) -> dict:
    """`base` with `changes` applied recursively (a new dict; lists and scalars are replaced)."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = updated(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def show_samples(trainer, path: Path, n: int = 8):
    """Grid of training pairs (view A | view B, keypoints and their warped positions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    batch = trainer.dataset.batch(rng, [int(rng.integers(len(trainer.dataset))) for _ in range(n)])
    fig, axes = plt.subplots(n // 2, 4, figsize=(12, 3 * n // 2))
    for i in range(n):
        for j, key in enumerate(("image0", "image1")):
            ax = axes[i // 2, 2 * (i % 2) + j]
            ax.imshow(batch[key][i].permute(1, 2, 0).numpy())
            kp = batch[f"keypoints{j}"][i][batch["valid"][i]].numpy()[:40]
            ax.scatter(kp[:, 0], kp[:, 1], s=4, c=np.arange(len(kp)), cmap="hsv")
            ax.set_title(f"{'A' if j == 0 else 'B: ' + batch['appearance'][i]}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    logger.info("Wrote training samples to %s", path)


def trainer_class(conf: dict) -> type:
    """The trainer of a config's `stage`: 'descriptor' (default) or 'detector'."""
    stage = conf.get("stage", "descriptor")
    if stage == "detector":
        from .detector_trainer import DetectorTrainer

        return DetectorTrainer
    if stage == "descriptor":
        from .trainer import Trainer

        return Trainer
    raise ValueError(f"Unknown stage '{stage}' in the train config: use 'descriptor' or 'detector'.")


def main(argv=None):
    parser = Parser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--resume", action="store_true", help="continue from output_dir/latest.pt")
    parser.add_argument("--show-samples", action="store_true", help="write output_dir/samples.png and exit")
    parser.add_argument("overrides", nargs="*",
                        help="config overrides as key.sub=value (YAML values), e.g. optim.lr=0.0001 threads=1; "
                             "the run writes to the config's output_dir unless output_dir=... is given")
    args = parser.parse_args(argv)
    conf = parse_overrides(load_config(args.config), args.overrides)
    trainer = trainer_class(conf)(conf)
    if args.show_samples:
        show_samples(trainer, trainer.out / "samples.png")
        return
    if args.resume:
        latest = trainer.out / "latest.pt"
        if not latest.is_file():
            raise FileNotFoundError(f"--resume: {latest} does not exist.")
        trainer.resume(latest)
    trainer.train()


if __name__ == "__main__":
    run_cli(main)
