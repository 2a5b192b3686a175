"""Top-k covisible database pairs from a COLMAP model (for triangulation).

    python -m hndesc_loc.pairs_from_covisibility --model SFM_DIR --output PAIRS.txt --num_matched 20
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pycolmap
from tqdm import tqdm

from . import logger
from .io import write_pairs
from .utils.cli import Parser, run as run_cli


def main(model: Path, output: Path, num_matched: int) -> Path:
    model = Path(model)
    if not model.is_dir():
        raise FileNotFoundError(f"COLMAP model {model} does not exist.")
    rec = pycolmap.Reconstruction(str(model))
    logger.info("Finding covisible pairs among %d images.", rec.num_images())
    pairs = []
    for image_id, image in tqdm(rec.images.items(), desc="covisibility", unit="img"):
        counts = Counter()
        for p2d in image.points2D:
            if p2d.has_point3D():
                for el in rec.points3D[p2d.point3D_id].track.elements:
                    if el.image_id != image_id:
                        counts[el.image_id] += 1
        if not counts:
            logger.info("Image %s has no covisible image.", image.name)
            continue
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:num_matched]
        pairs += [(image.name, rec.images[j].name) for j, _ in top]
    write_pairs(Path(output), pairs)
    logger.info("Wrote %d pairs to %s.", len(pairs), output)
    return Path(output)


def cli():
    p = Parser(description=__doc__)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--num_matched", type=int, default=20)
    a = p.parse_args()
    main(a.model, a.output, a.num_matched)


if __name__ == "__main__":
    run_cli(cli)
