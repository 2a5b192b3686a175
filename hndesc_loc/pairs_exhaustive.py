"""All pairs among a list of images (or between two lists)."""
from __future__ import annotations

from pathlib import Path

from .io import write_pairs


def main(output: Path, image_list: list[str], ref_list: list[str] | None = None) -> Path:
    if ref_list is None:
        pairs = [(a, b) for i, a in enumerate(image_list) for b in image_list[i + 1:]]
    else:
        pairs = [(a, b) for a in image_list for b in ref_list if a != b]
    write_pairs(Path(output), pairs)
    return Path(output)
