import numpy as np
import pytest

from hndesc_loc.retrieval_eval import average_precision, query_ap, recall_at_n, revisited_map


def test_ap_by_hand():
    # positives at ranks 0 and 2 out of 2 positives: precisions (1 + 1)/2 * .5 + (1/2 + 2/3)/2 * .5
    assert average_precision(np.array([0, 2]), 2) == pytest.approx(0.5 + (0.5 + 2 / 3) / 4)
    assert average_precision(np.array([0, 1, 2]), 3) == pytest.approx(1.0)
    # a positive missing from the ranking counts as not retrieved
    assert average_precision(np.array([0]), 2) == pytest.approx(0.5)


def test_junk_is_removed_and_protocols():
    ranking = np.array([5, 3, 1, 0, 2, 4])
    # junk 3 sits before the positive 1: removing it moves 1 from rank 2 to rank 1
    assert query_ap(ranking, [5, 1], [3]) == pytest.approx(1.0)
    assert query_ap(ranking, [5, 1], []) == pytest.approx(0.5 + (0.5 + 2 / 3) / 4)
    gnd = [{"easy": [5], "hard": [1], "junk": [3]}]
    m = revisited_map(ranking[None], gnd)
    assert m["easy"] == pytest.approx(1.0)      # ok=5, junk=3,1
    assert m["medium"] == pytest.approx(1.0)    # ok=5,1, junk=3
    # hard: ok=1, junk=3,5 -> 1 is first after removing junk
    assert m["hard"] == pytest.approx(1.0)
    gnd = [{"easy": [0], "hard": [4], "junk": []}]
    m = revisited_map(ranking[None], gnd)
    assert m["easy"] == pytest.approx((0 + 1 / 4) / 2)  # 0 at rank 3 (junk 4 after it): p0 = 0/3, p1 = 1/4
    assert m["hard"] == pytest.approx((0 + 1 / 5) / 2)  # 4 at rank 5, junk 0 before it removed -> rank 4


def test_recall_at_n():
    db = np.array([[0, 0], [100, 0], [0, 100], [10, 10]], float)
    q = np.array([[1, 1], [99, 1]], float)
    rankings = np.array([[1, 2, 3, 0], [0, 2, 3, 1]])
    r = recall_at_n(rankings, db, q, ns=(1, 3, 4))
    assert r == {1: 0.0, 3: 0.5, 4: 1.0}
