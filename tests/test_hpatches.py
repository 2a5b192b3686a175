import json

import numpy as np
import pytest

from hndesc_loc import hpatches


@pytest.fixture(scope="module")
def mini_hpatches(photo_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hp") / "hpatches-mini"
    return hpatches.generate([photo_dir / "a.jpg", photo_dir / "c.jpg"], root, seed=0, max_size=320)


def test_generated_layout(mini_hpatches):
    seqs = hpatches.list_sequences(mini_hpatches)
    assert seqs == ["i_a", "i_c", "v_a", "v_c"]
    assert np.allclose(np.loadtxt(mini_hpatches / "i_a" / "H_1_3"), np.eye(3))
    assert not np.allclose(np.loadtxt(mini_hpatches / "v_a" / "H_1_6"), np.eye(3))


def test_pipeline_metrics_and_outputs(mini_hpatches, tmp_path):
    from pipelines import hpatches as pipeline

    res = pipeline.run(mini_hpatches, tmp_path, confs=["hndesc", "sift"])
    for name in ("hndesc", "sift"):
        for split in ("v", "i", "avg"):
            mma = res[name][split]["mma"]
            assert len(mma) == 10 and all(a <= b + 1e-9 for a, b in zip(mma, mma[1:]))
        # Ground-truth homographies are right: most SIFT matches on the viewpoint pairs are correct.
        assert res[name]["v"]["mma"][2] > 0.6, res[name]["v"]
        assert res[name]["v"]["hest"][3] >= 0.5
    assert json.loads((tmp_path / "hpatches_hpatches-mini.json").read_text())["sift"]["v"]["num_pairs"] == 10
    assert (tmp_path / "hpatches_hpatches-mini_mma_i.png").stat().st_size > 1000
    table = hpatches.format_table(res)
    assert "hndesc" in table and "MMA@1" in table


def test_pair_metrics_detects_wrong_homography(mini_hpatches, tmp_path):
    """The same features scored against a wrong homography collapse: the metric can fail."""
    rng = np.random.default_rng(0)
    k0 = rng.uniform(0, 300, (200, 2))
    d = rng.normal(size=(32, 200)).astype(np.float32)
    d /= np.linalg.norm(d, axis=0)
    H = np.array([[1, 0, 5.0], [0, 1, -3.0], [0, 0, 1]])
    f0 = {"keypoints": k0, "descriptors": d, "image_size": np.array([320, 320])}
    f1 = {"keypoints": k0 + [5, -3], "descriptors": d, "image_size": np.array([320, 320])}
    good = hpatches.pair_metrics(f0, f1, H, (320, 320))
    bad = hpatches.pair_metrics(f0, f1, np.eye(3), (320, 320))
    assert good["mma"][0] == 1.0 and good["corner_error"] < 1
    assert bad["mma"][4] == 0.0 and bad["corner_error"] > 4


def test_layout_error(tmp_path):
    (tmp_path / "v_x").mkdir()
    (tmp_path / "v_x" / "1.ppm").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="lacks"):
        hpatches.list_sequences(tmp_path)


def test_held_out_family_sequences_are_evaluated_on_their_own(photo_dir, tmp_path):
    """`h_` sequences (photometric families training never uses) are listed, evaluated as split
    'h', and kept out of HPatches' 'avg' (v and i only)."""
    root = hpatches.generate([photo_dir / "a.jpg"], tmp_path / "hp", seed=0, max_size=256, held_out_families=True)
    assert hpatches.list_sequences(root) == ["h_a", "i_a", "v_a"]
    from hndesc_loc import extract_features

    feats = extract_features.main(extract_features.confs["sift"], root, feature_path=tmp_path / "f.h5",
                                  image_list=hpatches.image_names(root))
    res = hpatches.evaluate_features(root, feats)
    assert res["h"]["num_pairs"] == 5 and res["avg"]["num_pairs"] == 10
    # and per family: the independently written night twice, the other families once
    assert res["h:sensor_night"]["num_pairs"] == 2 and res["h:cast_shadow"]["num_pairs"] == 1
    assert "h:sensor_night" in hpatches.format_table({"sift": res})
