"""End to end on the synthetic scene: a broken step (keypoint convention, transposed pose,
pair naming) moves the poses far beyond these tolerances."""
import json
import shutil
from pathlib import Path

import pytest

from hndesc_loc.evaluate import evaluate, evaluate_conditions
from hndesc_loc.io import read_poses


@pytest.fixture(scope="module")
def aachen_run(scene, tmp_path_factory):
    from pipelines import aachen

    out = aachen.run(scene["aachen"], tmp_path_factory.mktemp("aachen_out"), num_covis=10, num_loc=8)
    return out


def test_aachen_pipeline_localizes_day_and_night(scene, aachen_run):
    results, gt = read_poses(aachen_run["results"]), read_poses(scene["ground_truth"])
    queries = [line.split()[0] for line in aachen_run["queries"].read_text().splitlines()]
    assert set(results) == {q.split("/")[-1] for q in queries}  # basenames, one line per query
    ev = evaluate_conditions(results, gt, queries)
    assert ev["day"]["recall"][0] == 1.0, ev["day"]
    assert ev["day"]["median_t"] < 0.05 and ev["day"]["median_R"] < 0.3
    assert ev["night"]["recall"][2] >= 0.8, ev["night"]["errors"]
    assert ev["night"]["median_t"] < 0.5 and ev["night"]["median_R"] < 2.0, ev["night"]
    logs = json.loads((aachen_run["results"].parent / (aachen_run["results"].name + "_logs.json")).read_text())
    q = queries[0]
    assert logs["queries"][q]["num_inliers"] > 30 and len(logs["queries"][q]["retrieved"]) == 8


def test_aachen_pipeline_with_hndesc_joint(scene, tmp_path):
    """HNDesc's own detector (hndesc_joint) instead of SIFT keypoints. Its keypoints are less
    precisely placed than SIFT's (figures on this scene: README, "Localization"), hence wider
    bounds than `hndesc`'s."""
    from pipelines import aachen

    out = aachen.run(scene["aachen"], tmp_path, num_covis=10, num_loc=8, feature_conf="hndesc_joint")
    results, gt = read_poses(out["results"]), read_poses(scene["ground_truth"])
    queries = [line.split()[0] for line in out["queries"].read_text().splitlines()]
    ev = evaluate_conditions(results, gt, queries)
    assert ev["day"]["recall"][2] == 1.0 and ev["day"]["recall"][0] >= 0.5, ev["day"]
    assert ev["day"]["median_t"] < 0.3 and ev["day"]["median_R"] < 1.0, ev["day"]
    assert ev["night"]["recall"][2] >= 0.8, ev["night"]["errors"]
    assert ev["night"]["median_t"] < 0.5 and ev["night"]["median_R"] < 2.0, ev["night"]


def test_aachen_rerun_skips_everything(scene, aachen_run):
    from pipelines import aachen

    before = {p: p.stat().st_mtime_ns for p in (aachen_run["features"], aachen_run["loc_matches"])}
    aachen.run(scene["aachen"], aachen_run["results"].parent, num_covis=10, num_loc=8)
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_inloc_pipeline_localizes_night(scene, tmp_path):
    from pipelines import inloc

    out = inloc.run(scene["inloc"], tmp_path, num_loc=8, ransac_thresh=12.0)
    results, gt = read_poses(out["results"]), read_poses(scene["inloc_ground_truth"])
    ev = evaluate(results, gt)
    assert ev["recall"][2] >= 0.8 and ev["median_t"] < 0.5 and ev["median_R"] < 2.0, ev


def test_wrong_layouts_are_clear_errors(scene, tmp_path):
    from pipelines import aachen, inloc

    broken = tmp_path / "aachen"
    shutil.copytree(scene["aachen"] / "queries", broken / "queries")
    with pytest.raises(FileNotFoundError, match=r"Aachen v1.1 layout; missing: \['images_upright/db'"):
        aachen.run(broken, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="InLoc layout; missing folders"):
        inloc.run(broken, tmp_path / "out2")


def test_localize_rejects_mismatched_features(scene, aachen_run, tmp_path):
    """Matching features that are not those of the triangulated model is a clear error."""
    from hndesc_loc import localize_sfm
    from hndesc_loc.io import open_h5, write_item

    fake = tmp_path / "fake.h5"
    with open_h5(aachen_run["loc_matches"]) as src, open_h5(fake, "w") as dst:
        def copy(name, obj):
            if hasattr(obj, "shape") and name.endswith("matches0") and not name.endswith("scores0"):
                m = obj[()]
                m[m > -1] += 100000  # indices beyond the model's keypoints
                write_item(dst, name.rsplit("/", 1)[0], {"matches0": m,
                                                         "matching_scores0": src[name.rsplit("/", 1)[0]]["matching_scores0"][()]})
        src.visititems(copy)
    with pytest.raises(ValueError, match="features used for triangulation differ"):
        localize_sfm.main(aachen_run["sfm_dir"], aachen_run["queries"], aachen_run["loc_pairs"],
                          aachen_run["features"], fake, tmp_path / "res.txt")
    assert not (tmp_path / "res.txt").exists()


def test_localization_resumes_after_sigkill(aachen_run, tmp_path):
    """localize_sfm killed for real (SIGKILL) once some queries are in its partial file, maybe
    mid-line: the rerun keeps them, computes the rest, and gives the clean run's poses."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from hndesc_loc import localize_sfm

    r = aachen_run
    results = tmp_path / "results.txt"
    partial = Path(str(results) + ".partial.jsonl")
    args = [r["sfm_dir"], r["queries"], r["loc_pairs"], r["features"], r["loc_matches"], results]
    code = ("import sys; from pathlib import Path; from hndesc_loc import localize_sfm\n"
            f"localize_sfm.main(*[Path(a) for a in {[str(a) for a in args]!r}], "
            "conf={'ransac_thresh': 12.0, 'covisibility_clustering': False})")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.time()
    while time.time() - start < 120 and proc.poll() is None:
        if partial.exists() and partial.read_bytes().count(b"\n") >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    if not partial.exists():
        pytest.skip("the run finished before the kill (machine too fast for this check)")
    done = localize_sfm.read_progress(partial)
    assert 2 <= len(done) < 10
    with open(partial, "ab") as fp:  # as if killed in the middle of a record
        fp.write(b'{"query": "night/x.jpg", "quat')
    localize_sfm.main(*args, conf={"ransac_thresh": 12.0, "covisibility_clustering": False})
    assert not partial.exists()
    assert results.read_text() == r["results"].read_text()
