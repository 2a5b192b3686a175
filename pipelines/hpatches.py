"""HPatches sparse-matching evaluation in the paper's format.

    python -m pipelines.hpatches --dataset datasets/hpatches-sequences-release --conf hndesc sift \
        [--features other_method.h5 ...] --outputs outputs/hpatches
    # An HPatches-format set made from your own photos (not HPatches numbers!):
    python -m pipelines.hpatches --make_synthetic_from PHOTOS_DIR --dataset outputs/hpatches-synthetic ...
"""
from __future__ import annotations

from pathlib import Path

from hndesc_loc import extract_features, hpatches, logger
from hndesc_loc.io import list_images
from hndesc_loc.match_features import confs as matcher_confs
from hndesc_loc.utils.cli import Parser, run as run_cli


def run(dataset: Path, outputs: Path, confs: list[str] = (), features: list[Path] = (), matcher: str = "NN-mutual",
        resize_max: int | None = None, overrides: list[str] = ()) -> dict:
    dataset, outputs = Path(dataset), Path(outputs)
    names = hpatches.image_names(dataset)  # validates the layout
    results = {}
    for name in confs:
        conf = extract_features.conf_with_overrides(extract_features.confs[name], list(overrides))
        if resize_max is not None:
            conf["preprocessing"]["resize_max"] = resize_max
        path = extract_features.main(conf, dataset, feature_path=outputs / f"{dataset.name}_{conf['output']}.h5",
                                     image_list=names)
        results[name] = hpatches.evaluate_features(dataset, path, matcher_confs[matcher]["model"])
    for path in features:
        results[Path(path).stem] = hpatches.evaluate_features(dataset, path, matcher_confs[matcher]["model"])
    if not results:
        raise ValueError("Nothing to evaluate: give --conf and/or --features.")
    print(hpatches.format_table(results))
    paths = hpatches.save_results(results, outputs, f"hpatches_{dataset.name}")
    logger.info("Wrote %s", ", ".join(str(p) for p in paths.values()))
    return results


def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--outputs", type=Path, default=Path("outputs/hpatches"))
    p.add_argument("--conf", nargs="*", default=["hndesc"], choices=extract_features.local_confs(),
                   help="local feature confs to evaluate")
    p.add_argument("--features", nargs="*", type=Path, default=[], help="feature files (.h5) to evaluate as they are")
    p.add_argument("--matcher", default="NN-mutual", choices=list(matcher_confs), help="matcher conf")
    p.add_argument("--resize_max", type=int)
    p.add_argument("--make_synthetic_from", type=Path, help="first write an HPatches-format set from these photos")
    p.add_argument("--viz", type=int, default=0, metavar="N", help="match figures (1-6 pair) of N sequences per conf")
    p.add_argument("overrides", nargs="*", help="overrides applied to every --conf, e.g. model.weights=PATH")
    a = p.parse_args(argv)
    if a.make_synthetic_from:
        photos = [a.make_synthetic_from / n for n in list_images(a.make_synthetic_from)]
        hpatches.generate(photos, a.dataset)
    run(a.dataset, a.outputs, a.conf, a.features, a.matcher, a.resize_max, a.overrides)
    if a.viz:
        seqs = hpatches.list_sequences(a.dataset)
        chosen = seqs[:: max(1, len(seqs) // a.viz)][: a.viz]
        for path in list(a.outputs.glob(f"{a.dataset.name}_*.h5")) + list(a.features):
            for seq in chosen:
                out = a.outputs / "viz" / f"{Path(path).stem}_{seq}.png"
                hpatches.plot_pair(a.dataset, path, seq, 6, out, matcher_confs[a.matcher]["model"])
                logger.info("Wrote %s", out)


if __name__ == "__main__":
    run_cli(main)
