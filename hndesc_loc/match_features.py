"""Match local features for a list of pairs into an hloc-format match file.

    python -m hndesc_loc.match_features --pairs PAIRS.txt --features FEATS.h5 --matches MATCHES.h5
"""
from __future__ import annotations

import pprint
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from . import logger
from .io import (claimed, find_pair, list_h5_names, names_to_pair, open_h5, parse_pairs, provenance_string,
                 read_provenance, require_path, write_item)
from .matchers import default_matcher_conf, match_nearest_neighbor
from .utils.base_model import merge_conf
from .utils.cli import Parser, run as run_cli

confs = {
    "NN-mutual": {"output": "matches-NN-mutual", "model": {"name": "nearest_neighbor", "do_mutual_check": True}},
    # Ratio test on top of the mutual check: removes the chance matches that otherwise pass
    # geometric verification between unrelated images (our default for localization).
    "NN-ratio": {"output": "matches-NN-mutual-ratio0.9",
                 "model": {"name": "nearest_neighbor", "do_mutual_check": True, "ratio_threshold": 0.9}},
    "NN-superpoint": {"output": "matches-NN-mutual-dist.7",
                      "model": {"name": "nearest_neighbor", "do_mutual_check": True, "distance_threshold": 0.7}},
}


class FeatureReader:
    """Keeps the feature files open and caches descriptors of recently used images
    (a query appears in many retrieval pairs)."""

    def __init__(self, paths: list[Path], device: str = "cpu", cache_size: int = 256):
        self.files = [open_h5(p) for p in paths]
        self.paths = paths
        self.device = device
        self.get = lru_cache(maxsize=cache_size)(self._get)

    def _get(self, name: str) -> torch.Tensor:
        for fd in self.files:
            if name in fd:
                d = fd[name]["descriptors"][()]
                return torch.from_numpy(d.astype(np.float32)).to(self.device)
        raise KeyError(f"Image '{name}' is not in the feature file(s) {[str(p) for p in self.paths]}: "
                       "extract its features first (or fix the pair list).")

    def close(self):
        for fd in self.files:
            fd.close()


class MatchWorker:
    """The matching step's worker (for any executor): feature files opened once, descriptors
    cached; the second image of a pair is read from `refs` (the features, then features_ref)."""

    def __init__(self, model_conf: dict, features: Path, refs: list[Path]):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.reader = FeatureReader([require_path(Path(features))], device)
        self.reader_ref = FeatureReader([require_path(Path(p)) for p in refs], device) if len(refs) > 1 else self.reader
        self.conf = model_conf

    def process(self, pairs: list[tuple[str, str]]) -> list:
        return [((a, b), match_pair(self.reader, self.reader_ref, a, b, self.conf)) for a, b in pairs]

    def close(self):
        self.reader.close()
        if self.reader_ref is not self.reader:
            self.reader_ref.close()


def check_pairs(pairs: list[tuple[str, str]], available: set[str], pairs_path) -> None:
    missing = sorted({n for p in pairs for n in p if n not in available})
    if missing:
        raise KeyError(f"{len(missing)} image(s) named in {pairs_path} are missing from the feature file(s), "
                       f"e.g. {missing[:5]}: extract features for them or regenerate the pairs.")


def unique_pairs(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen, out = set(), []
    for a, b in pairs:
        if (a, b) in seen or (b, a) in seen:
            continue
        seen.add((a, b))
        out.append((a, b))
    return out


def match_pair(reader: FeatureReader, reader_ref: FeatureReader, name0: str, name1: str, conf: dict) -> dict:
    d0, d1 = reader.get(name0), reader_ref.get(name1)
    pred = match_nearest_neighbor(d0[None], d1[None], conf)
    return {"matches0": pred["matches0"][0].cpu().numpy().astype(np.int32),
            "matching_scores0": pred["matching_scores0"][0].cpu().numpy().astype(np.float16)}


def main(conf: dict, pairs: Path, features: Path | str, export_dir: Path | None = None,
         matches: Path | None = None, features_ref: Path | None = None, overwrite: bool = False,
         executor=None) -> Path:
    """Match the `pairs` with features from `features` (and `features_ref` for the second
    image when given). Pairs already in the match file are skipped unless `overwrite`."""
    if isinstance(features, str) and not features.endswith(".h5"):
        if export_dir is None:
            raise ValueError("Give export_dir when `features` is a feature conf name.")
        features = Path(export_dir) / f"{features}.h5"
    features = Path(features)
    if matches is None:
        if export_dir is None:
            raise ValueError("Give export_dir or matches.")
        matches = Path(export_dir) / f"{features.stem}_{conf['output']}_{Path(pairs).stem}.h5"
    matches = Path(matches)
    matches.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Matching local features with configuration:\n%s", pprint.pformat(conf))
    model_conf = dict(conf["model"])
    if model_conf.pop("name", "nearest_neighbor") != "nearest_neighbor":
        raise KeyError(f"Unknown matcher {conf['model']['name']}; available: nearest_neighbor")
    model_conf = merge_conf(default_matcher_conf, model_conf, "matcher conf")
    pair_list = unique_pairs(parse_pairs(pairs))
    refs = [features] + ([Path(features_ref)] if features_ref else [])
    for f in refs:
        if not f.is_file():
            raise FileNotFoundError(f"Feature file {f} does not exist: run extract_features first.")
    # The matches index the keypoints of these feature files: they are valid only for them.
    provenance = provenance_string({"matcher": model_conf, "features": [read_provenance(f) for f in refs]})
    with claimed(matches, provenance, overwrite, "matches"):
        if not overwrite:
            with open_h5(matches) as fd:
                pair_list = [(a, b) for a, b in pair_list if find_pair(fd, a, b) is None]
        if not pair_list:
            logger.info("Skipping the matching: every pair is already in %s.", matches)
            return matches
        available = [list_h5_names(f) for f in refs]  # refs[0] is `features`
        check_pairs([(a, a) for a, _ in pair_list], available[0], pairs)
        check_pairs([(b, b) for _, b in pair_list], set().union(*available), pairs)
        from .distributed import LocalExecutor

        with open_h5(matches, "a") as fd:
            def write(results):
                for (a, b), data in results:
                    write_item(fd, names_to_pair(a, b), data)

            (executor or LocalExecutor()).map(MatchWorker, (model_conf, features, refs), pair_list, "match", write)
    logger.info("Finished exporting matches to %s.", matches)
    return matches


def cli():
    parser = Parser(description=__doc__)
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--matches", type=Path)
    parser.add_argument("--export_dir", type=Path)
    parser.add_argument("--conf", default="NN-ratio", choices=list(confs))
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--executor", choices=["local", "ray"], default="local")
    args = parser.parse_args()
    from .distributed import make_executor

    main(confs[args.conf], args.pairs, args.features, args.export_dir, args.matches, overwrite=args.overwrite,
         executor=make_executor(args.executor))


if __name__ == "__main__":
    run_cli(cli)
