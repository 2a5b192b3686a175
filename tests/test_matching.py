import h5py
import numpy as np
import pytest
import torch

from hndesc_loc import match_features
from hndesc_loc.io import get_matches, names_to_pair, open_h5, write_item
from hndesc_loc.matchers import default_matcher_conf, match_nearest_neighbor


def unit(x):
    return x / np.linalg.norm(x, axis=0, keepdims=True)


def test_mutual_nn_and_ratio():
    rng = np.random.default_rng(0)
    d1 = unit(rng.normal(size=(32, 50)))
    perm = rng.permutation(50)
    d0 = unit(d1[:, perm] + 0.05 * rng.normal(size=(32, 50)))
    d0[:, :5] = unit(rng.normal(size=(32, 5)))  # 5 descriptors with no true match
    pred = match_nearest_neighbor(torch.tensor(d0)[None].float(), torch.tensor(d1)[None].float(),
                                  {**default_matcher_conf, "ratio_threshold": 0.8})
    m0 = pred["matches0"][0].numpy()
    assert np.array_equal(m0[5:], perm[5:])
    assert (m0[:5] == -1).all()  # the ratio test rejects the unmatched ones
    assert (pred["matching_scores0"][0].numpy()[5:] > 0.9).all()


def test_mutual_check_rejects_one_sided():
    d0 = torch.tensor([[[1.0, 0.9]], [[0.0, 0.436]]]).reshape(1, 2, 2)  # two points close to the same target
    d0 = torch.nn.functional.normalize(d0, dim=1)
    d1 = torch.tensor([[1.0], [0.0]])[None]
    m0 = match_nearest_neighbor(d0, d1, default_matcher_conf)["matches0"][0].tolist()
    assert m0 == [0, -1]


def make_features(path, names, n=40, seed=0):
    rng = np.random.default_rng(seed)
    base = unit(rng.normal(size=(16, n)))
    with open_h5(path, "w") as fd:
        for i, name in enumerate(names):
            perm = np.roll(np.arange(n), i)
            write_item(fd, name, {"keypoints": rng.uniform(0, 100, (n, 2)).astype(np.float32),
                                  "descriptors": base[:, perm].astype(np.float16), "scores": np.ones(n, np.float32),
                                  "image_size": np.array([100, 100])})


def test_match_file_layout_and_skip(tmp_path):
    feats = tmp_path / "f.h5"
    make_features(feats, ["db/a.jpg", "db/b.jpg", "query/q.jpg"])
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("query/q.jpg db/a.jpg\nquery/q.jpg db/b.jpg\ndb/a.jpg query/q.jpg\n")
    out = match_features.main(match_features.confs["NN-mutual"], pairs, feats, matches=tmp_path / "m.h5")
    with h5py.File(out, "r") as fd:
        assert list(fd.keys()) == ["query-q.jpg"]  # nested: name0 group / name1 dataset group
        assert sorted(fd["query-q.jpg"].keys()) == ["db-a.jpg", "db-b.jpg"]
        g = fd[names_to_pair("query/q.jpg", "db/b.jpg")]
        assert g["matches0"].shape == (40,) and g["matching_scores0"].shape == (40,)
    m, _ = get_matches(out, "query/q.jpg", "db/a.jpg")
    assert np.array_equal(m[:, 1], (m[:, 0] - 2) % 40)  # q[k] = a[k - 2]
    mtime = out.stat().st_mtime_ns
    match_features.main(match_features.confs["NN-mutual"], pairs, feats, matches=out)
    assert out.stat().st_mtime_ns == mtime  # everything skipped, file untouched


def test_match_bad_inputs(tmp_path):
    feats = tmp_path / "f.h5"
    make_features(feats, ["a.jpg", "b.jpg"])
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a.jpg c.jpg\n")
    with pytest.raises(KeyError, match="missing from the feature file.*c.jpg"):
        match_features.main(match_features.confs["NN-mutual"], pairs, feats, matches=tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()  # a failed start leaves no empty match file
    pairs.write_text("")
    with pytest.raises(ValueError, match="empty"):
        match_features.main(match_features.confs["NN-mutual"], pairs, feats, matches=tmp_path / "m.h5")


def test_retrieval_pairs(tmp_path):
    from hndesc_loc import pairs_from_retrieval
    from hndesc_loc.io import parse_pairs

    rng = np.random.default_rng(0)
    db = unit(rng.normal(size=(64, 10))).T
    path = tmp_path / "g.h5"
    with open_h5(path, "w") as fd:
        for i, d in enumerate(db):
            write_item(fd, f"db/{i}.jpg", {"global_descriptor": d.astype(np.float32)})
        write_item(fd, "query/q.jpg", {"global_descriptor": unit((db[3] + 0.3 * db[7])[:, None])[:, 0].astype(np.float32)})
    out = pairs_from_retrieval.main(path, tmp_path / "p.txt", 2, query_prefix="query", db_prefix="db")
    assert parse_pairs(out) == [("query/q.jpg", "db/3.jpg"), ("query/q.jpg", "db/7.jpg")]
    # db against itself: self-pairs are excluded
    out = pairs_from_retrieval.main(path, tmp_path / "p2.txt", 3, query_prefix="db", db_prefix="db")
    assert all(a != b for a, b in parse_pairs(out)) and len(parse_pairs(out)) == 30
