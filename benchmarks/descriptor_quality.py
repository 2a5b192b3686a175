"""Descriptor quality on an HPatches-style set built from photos NOT used for training
(../shared/data/phototourism_sample_images), through the project's HPatches evaluator.

    python benchmarks/descriptor_quality.py [--outputs outputs/bench_quality] [--weights extra.pt ...]
                                            [--joint_weights joint.pt ...] [--only_weights]

Methods: the shipped HNDesc on SIFT keypoints (tuned threshold 0.01 + stretch, and OpenCV's
default 0.04), OpenCV SIFT descriptors on the same keypoints, plain OpenCV SIFT at its
defaults, `hndesc_joint` (HNDesc's own detection head), and DISK when its weights are
installed. Per method and split (viewpoint / illumination): keypoint repeatability at 3 px,
MMA at 1..10 px, correct mutual matches per pair, homography accuracy; extraction time.
Images at 640 px unless --max_size says otherwise, mutual nearest neighbours.
"""
import argparse
import time
from pathlib import Path

from common import variant_confs
from hndesc_loc import extract_features, hpatches
from hndesc_loc.io import list_images, open_h5

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SIZE = 640
HELD_OUT = ROOT.parent / "shared" / "data" / "phototourism_sample_images"


def method_confs(extra_weights: list[Path], extra_joint_weights: list[Path] = ()) -> dict:
    c = extract_features.confs
    po = extract_features.parse_overrides
    confs = {
        "hndesc (shipped conf)": c["hndesc"],
        "sift-desc on same kpts": c["sift"],
        "opencv sift (defaults)": po(c["sift"], ["model.detector.contrast_threshold=0.04",
                                                 "model.detector.normalize_image=false"]),
        "hndesc @ sift default thr": po(c["hndesc"], ["model.detector.contrast_threshold=0.04",
                                                      "model.detector.normalize_image=false"]),
    }
    for w in extra_weights:
        confs[f"hndesc ({Path(w).stem})"] = po(c["hndesc"], [f"model.weights={w}"])
    from hndesc_loc.models.network import SHIPPED_JOINT_WEIGHTS

    if SHIPPED_JOINT_WEIGHTS["lite"].is_file():
        confs["hndesc_joint"] = c["hndesc_joint"]
    for w in extra_joint_weights:
        confs[f"hndesc_joint ({Path(w).parent.name}-{Path(w).stem})"] = po(c["hndesc_joint"], [f"model.weights={w}"])
    try:
        from hndesc_loc.detectors.disk import find_disk_weights

        find_disk_weights()
        confs["disk"] = c["disk"]
    except FileNotFoundError as e:
        print(f"DISK skipped: {e}")
    return confs


def held_out_dataset(outputs: Path, max_size: int = DEFAULT_SIZE) -> Path:
    if not HELD_OUT.is_dir():
        raise SystemExit(f"{HELD_OUT} is absent: this benchmark needs ../shared/data.")
    dataset = outputs / "hpatches-heldout-families"
    if not dataset.is_dir():
        hpatches.generate([HELD_OUT / n for n in list_images(HELD_OUT)], dataset, seed=0, max_size=max_size,
                          held_out_families=True)
    return dataset


def feature_file(outputs: Path, label: str) -> Path:
    return outputs / f"{label.replace(' ', '_').replace('/', '_').replace('(', '').replace(')', '')}.h5"


def evaluate_methods(outputs: Path, confs: dict, max_size: int = DEFAULT_SIZE) -> tuple[dict, dict, dict]:
    """Extract every conf on the held-out HPatches-style set and evaluate it with the project's
    HPatches evaluator. Returns (results, seconds per image, descriptor dimension)."""
    dataset = held_out_dataset(outputs, max_size)
    names = hpatches.image_names(dataset)
    results, timings, dims = {}, {}, {}
    for label, conf in confs.items():
        fpath = feature_file(outputs, label)
        t = time.time()
        n_before = len(extract_features.list_h5_names(fpath))
        extract_features.main(conf, dataset, feature_path=fpath, image_list=names)
        if n_before == 0:
            timings[label] = (time.time() - t) / len(names)
        results[label] = hpatches.evaluate_features(dataset, fpath)
        with open_h5(fpath) as fd:
            dims[label] = (fd[names[0]]["descriptors"].shape[0], fd[names[0]]["descriptors"].dtype.name)
    return results, timings, dims


def detection_figures(outputs: Path, conf: dict, label: str, max_size: int = DEFAULT_SIZE) -> list[Path]:
    """Keypoints + repeatability / reliability maps of a day image and its night version, and
    the matches of that illumination pair (green: within 3 px of the ground truth)."""
    import torch

    from hndesc_loc.extract_features import build_model, load_image
    from hndesc_loc.io import read_image
    from hndesc_loc.viz import plot_detection

    dataset = held_out_dataset(outputs, max_size)
    seq = next(s for s in hpatches.list_sequences(dataset) if s.startswith("i_"))
    model = build_model(conf)
    images, maps, kpts = [], [], []
    for k in (1, 6):
        image = load_image(dataset / seq / f"{k}.ppm", conf["preprocessing"])["image"][None]
        with torch.no_grad():
            feats = model.net(image)
            m = model.net.detection_maps(feats, image.shape[-2:])
            pred = model({"image": image})
        images.append(read_image(dataset / seq / f"{k}.ppm"))
        maps.append({key: v[0, 0].numpy() for key, v in m.items()})
        kpts.append(pred["keypoints"][0].numpy())
    paths = [outputs / "detection_maps.png", outputs / "joint_illumination_matches.png"]
    plot_detection(images, maps, kpts, paths[0], [f"{seq}/1.ppm", f"{seq}/6.ppm"])
    hpatches.plot_pair(dataset, feature_file(outputs, label), seq, 6, paths[1])
    return paths


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--outputs", type=Path, default=ROOT / "outputs" / "bench_quality",
                   help="folder for the generated set, features, results and figures (default: %(default)s)")
    p.add_argument("--weights", nargs="*", type=Path, default=[], help="more HNDesc checkpoints to compare")
    p.add_argument("--joint_weights", nargs="*", type=Path, default=[],
                   help="more hndesc_joint checkpoints (runs/<name>/best_val.pt) to compare")
    p.add_argument("--variant", nargs="*", default=[],
                   help='extra methods as "CONF key=value ...", e.g. "hndesc model.scale_pooling=[1.0] '
                        'model.matchability_candidates=null" (the shipped conf without its scale pooling, '
                        'and so without the selection by its head, learned for that pooling)')
    p.add_argument("--only_weights", action="store_true",
                   help="evaluate only --weights / --joint_weights / --variant (ablations)")
    p.add_argument("--max_size", type=int, default=DEFAULT_SIZE,
                   help="longest side of the generated images in px (default: %(default)s); the photos are about "
                        "1000 px, so 1024 keeps them at their own size. Another size than the default works in "
                        "OUTPUTS/<size>px/ (its own set, features and results)")
    a = p.parse_args()
    if a.max_size < 64:
        raise SystemExit(f"--max_size {a.max_size}: too small for the evaluator's crops; use 640 (default) or 1024.")
    if a.max_size != DEFAULT_SIZE:  # the set, the feature files (named by method) and the results differ by size
        a.outputs = a.outputs / f"{a.max_size}px"
    confs = method_confs(a.weights, a.joint_weights)
    if a.only_weights:
        tags = [f"({Path(w).stem})" for w in a.weights] + [f"({Path(w).parent.name}-{Path(w).stem})" for w in a.joint_weights]
        confs = {k: v for k, v in confs.items() if any(t in k for t in tags)}
    confs.update(variant_confs(a.variant))
    results, timings, _ = evaluate_methods(a.outputs, confs, a.max_size)
    print(f"\nHPatches-style set from held-out photos (NOT HPatches numbers), {a.max_size} px, mutual NN; splits: v viewpoint, "
          "i illumination by the training renderer's families, h photometric families held out from training")
    print(hpatches.format_table(results))
    for label, t in timings.items():
        print(f"extraction {label}: {t * 1000:.0f} ms / image")
    print({k: str(v) for k, v in hpatches.save_results(results, a.outputs, "quality").items()})
    joint = [k for k in results if k.startswith("hndesc_joint")]
    if joint:
        print("figures:", detection_figures(a.outputs, confs[joint[0]], joint[0], a.max_size))
    ref = results.get("sift-desc on same kpts")
    for label in results:
        if label.startswith("hndesc (") and ref is not None:
            d_i = results[label]["i"]["mma"][2] - ref["i"]["mma"][2]
            d_v = results[label]["v"]["mma"][2] - ref["v"]["mma"][2]
            print(f"{label}: MMA@3 vs SIFT descriptors on the same keypoints: illumination {100 * d_i:+.1f} pts, "
                  f"viewpoint {100 * d_v:+.1f} pts (targets: >= +10, >= 0)")
        if label.startswith("hndesc_joint"):
            r = results[label]["h"]
            print(f"{label}: held-out families MMA@3 {r['mma'][2]:.3f} (target >= 0.85), {r['correct3']:.0f} correct "
                  f"matches per pair (target >= 400), repeatability@3 {r['rep3']:.3f}")


if __name__ == "__main__":
    main()
