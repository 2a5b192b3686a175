import numpy as np
import pycolmap
import pytest

from hndesc_loc import io


def test_pair_names_and_lookup(tmp_path):
    assert io.names_to_pair("db/1.jpg", "query/day/2.jpg") == "db-1.jpg/query-day-2.jpg"
    path = tmp_path / "m.h5"
    with io.open_h5(path, "w") as fd:
        io.write_item(fd, io.names_to_pair("a/x.jpg", "b.jpg"), {"matches0": np.array([1, -1, 0]),
                                                                  "matching_scores0": np.array([.9, 0, .8])})
        io.write_item(fd, io.names_to_pair_old("c.jpg", "d.jpg"), {"matches0": np.array([0]),
                                                                   "matching_scores0": np.array([.5])})
    m, s = io.get_matches(path, "a/x.jpg", "b.jpg")
    assert m.tolist() == [[0, 1], [2, 0]]
    m, _ = io.get_matches(path, "b.jpg", "a/x.jpg")  # reversed order
    assert m.tolist() == [[1, 0], [0, 2]]
    m, _ = io.get_matches(path, "c.jpg", "d.jpg")  # old '_' separator
    assert m.tolist() == [[0, 0]]
    with pytest.raises(KeyError, match="not found"):
        io.get_matches(path, "a/x.jpg", "zzz.jpg")


def test_partial_item_is_never_trusted(tmp_path):
    path = tmp_path / "f.h5"
    with io.open_h5(path, "w") as fd:
        io.write_item(fd, "done.jpg", {"keypoints": np.zeros((2, 2))})
        # Simulate a run killed while writing an item: datasets in the staging group.
        fd.create_group("__staging__/deadbeef").create_dataset("keypoints", data=np.zeros((3, 2)))
    assert io.list_h5_names(path) == {"done.jpg"}
    with io.open_h5(path, "a") as fd:
        assert "__staging__" not in fd


def test_corrupt_h5_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.h5"
    path.write_bytes(b"not an hdf5 file")
    with pytest.raises(OSError, match="delete it and rerun"):
        io.open_h5(path)


def test_pairs_and_queries_errors(tmp_path):
    empty = tmp_path / "pairs.txt"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        io.parse_pairs(empty)
    q = tmp_path / "q.txt"
    q.write_text("query/1.jpg NOT_A_MODEL 640 480 500 320 240\n")
    with pytest.raises(ValueError, match="q.txt:1"):
        io.parse_image_list_with_intrinsics(q)
    q.write_text("query/1.jpg SIMPLE_RADIAL 640 480 500 320 240 0.01\n")
    (name, cam), = io.parse_image_list_with_intrinsics(q)
    assert name == "query/1.jpg" and cam.model == pycolmap.CameraModelId.SIMPLE_RADIAL


def test_results_format_is_wxyz_camera_from_world(tmp_path):
    R = pycolmap.Rotation3d(np.array([0.3, -0.2, 0.5]))  # axis-angle
    pose = pycolmap.Rigid3d(R, np.array([1.0, 2.0, 3.0]))
    path = tmp_path / "res.txt"
    io.write_poses(path, {"IMG_1.jpg": pose})
    fields = path.read_text().split()
    assert fields[0] == "IMG_1.jpg"
    qw, qx, qy, qz = map(float, fields[1:5])
    x, y, z, w = pose.rotation.quat
    assert np.allclose([qw, qx, qy, qz], [w, x, y, z]) and qw != pytest.approx(x)
    from hndesc_loc.evaluate import qvec_to_rotmat

    assert np.allclose(qvec_to_rotmat(np.array([qw, qx, qy, qz])), pose.rotation.matrix(), atol=1e-6)
    assert np.allclose(list(map(float, fields[5:])), [1, 2, 3])
    assert not list(tmp_path.glob(".*tmp"))


def test_pycolmap_version_check():
    from hndesc_loc.colmap_utils import check_pycolmap

    check_pycolmap()  # the installed one
    check_pycolmap("3.13.0")
    for bad in ("3.11.1", "3.12.6", "5.0.0"):
        with pytest.raises(RuntimeError, match="pycolmap>=3.13,<5"):
            check_pycolmap(bad)


def test_truncated_jpeg_is_refused_and_complete_ones_read_as_opencv_reads_them(tmp_path):
    """A JPEG cut short (an interrupted copy) is an error, although cv2.imread decodes it; complete
    files, with or without bytes after the end marker, give exactly cv2.imread's pixels."""
    import cv2
    import numpy as np
    import pytest

    from hndesc_loc.io import read_image

    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.uniform(0, 255, (240, 320, 3)).astype(np.uint8), (7, 7), 2)
    data = cv2.imencode(".jpg", image)[1].tobytes()
    for name, content in (("whole.jpg", data), ("trailer.jpg", data + b"camera trailer \xff\x00")):
        (tmp_path / name).write_bytes(content)
        expected = cv2.imread(str(tmp_path / name), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)[:, :, ::-1]
        np.testing.assert_array_equal(read_image(tmp_path / name), expected)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 3 // 4])
    assert cv2.imread(str(tmp_path / "cut.jpg")) is not None     # what the check is for
    with pytest.raises(ValueError, match="cut.jpg is truncated"):
        read_image(tmp_path / "cut.jpg")


def test_evaluate_conditions_splits_queries_by_their_folder():
    import numpy as np

    from hndesc_loc.evaluate import evaluate_conditions

    pose = (np.array([1.0, 0, 0, 0]), np.zeros(3))
    gt = {"a.jpg": pose, "b.jpg": pose, "c.jpg": pose}
    results = {"a.jpg": pose, "c.jpg": (pose[0], np.array([3.0, 0, 0]))}
    queries = ["query/day/milestone/a.jpg", "query/night/nexus5x/b.jpg", "query/night/nexus5x/c.jpg"]
    ev = evaluate_conditions(results, gt, queries)
    assert ev["day"]["num"] == 1 and ev["day"]["recall"] == [1.0, 1.0, 1.0]
    assert ev["night"]["num"] == 2 and ev["night"]["recall"] == [0.0, 0.0, 0.5]   # b missing, c 3 m off
