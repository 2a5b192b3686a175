"""Killed runs resume: extraction and matching are started in a subprocess, killed for real
(SIGKILL, SIGTERM) mid-run, rerun; the files must open, the finished items be skipped and the
final content equal a clean run."""
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
N_IMAGES = 48


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    import cv2
    import skimage.data

    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    for i in range(N_IMAGES):
        p = photos[i % len(photos)]
        y, x = rng.integers(0, p.shape[0] - 256), rng.integers(0, p.shape[1] - 256)
        cv2.imwrite(str(root / f"img{i:02d}.jpg"), p[y:y + 256, x:x + 256, ::-1])
    return root


def run_and_kill(code: str, sig: int, min_done: int, total: int, timeout: float = 120) -> int:
    """Run `code` in a fresh Python, send `sig` once its tqdm bar shows >= min_done items
    (and fewer than total); returns the count seen at the kill."""
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    seen, buf, start = 0, b"", time.time()
    import os

    os.set_blocking(proc.stderr.fileno(), False)
    while time.time() - start < timeout:
        chunk = proc.stderr.read() or b""
        buf = (buf + chunk)[-4000:]
        counts = [int(m) for m in re.findall(rb"\| *(\d+)/%d" % total, buf)]
        if counts:
            seen = max(counts)
        if min_done <= seen < total:
            proc.send_signal(sig)
            proc.wait(timeout=60)
            return seen
        if proc.poll() is not None:
            raise AssertionError(f"finished before the kill (saw {seen}); stderr: {buf[-800:]!r}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no progress seen; stderr: {buf[-800:]!r}")


def h5_content(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as fd:
        fd.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


EXTRACT = """
import sys; from pathlib import Path
from hndesc_loc import extract_features as ef
ef.main(ef.confs['hndesc'], Path(sys.argv[1]), feature_path=Path(sys.argv[2]))
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_extraction_resumes_after_a_real_kill(many_images, tmp_path, sig, monkeypatch):
    from hndesc_loc import extract_features as ef
    from hndesc_loc.io import list_h5_names

    feats = tmp_path / "feats.h5"
    code = EXTRACT.replace("sys.argv[1]", repr(str(many_images))).replace("sys.argv[2]", repr(str(feats)))
    run_and_kill(code, sig, 5, N_IMAGES)
    done = list_h5_names(feats)  # the file opens
    assert 0 < len(done) < N_IMAGES
    calls = []
    real = ef.extract_one
    monkeypatch.setattr(ef, "extract_one", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    ef.main(ef.confs["hndesc"], many_images, feature_path=feats)
    assert not set(calls) & done and len(calls) == N_IMAGES - len(done)  # finished items skipped
    monkeypatch.setattr(ef, "extract_one", real)
    clean = ef.main(ef.confs["hndesc"], many_images, feature_path=tmp_path / "clean.h5")
    a, b = h5_content(feats), h5_content(clean)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


MATCH = """
from pathlib import Path
from hndesc_loc import match_features as mf
mf.main(mf.confs['NN-mutual'], Path(PAIRS), Path(FEATS), matches=Path(MATCHES))
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_matching_resumes_after_a_real_kill(many_images, tmp_path, sig):
    from hndesc_loc import extract_features as ef, match_features as mf
    from hndesc_loc.io import list_images, write_pairs

    feats = ef.main(ef.confs["sift"], many_images, feature_path=tmp_path / "feats.h5")
    names = list_images(many_images)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]][:600]
    write_pairs(tmp_path / "pairs.txt", pairs)
    matches = tmp_path / "matches.h5"
    code = MATCH.replace("PAIRS", repr(str(tmp_path / "pairs.txt"))).replace("FEATS", repr(str(feats))) \
        .replace("MATCHES", repr(str(matches)))
    run_and_kill(code, sig, 30, len(pairs))
    mf.main(mf.confs["NN-mutual"], tmp_path / "pairs.txt", feats, matches=matches)
    clean = mf.main(mf.confs["NN-mutual"], tmp_path / "pairs.txt", feats, matches=tmp_path / "clean.h5")
    a, b = h5_content(matches), h5_content(clean)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_file_left_open_for_write_by_hloc_style_writer_is_recovered(tmp_path):
    """A file written with libver='latest' (hloc's way) by a process killed with SIGKILL keeps
    an 'open for write' mark; open_h5 recovers its complete items."""
    from hndesc_loc.io import list_h5_names, open_h5

    path = tmp_path / "hloc.h5"
    code = (f"import h5py, os, signal, numpy as np\n"
            f"fd = h5py.File({str(path)!r}, 'a', libver='latest')\n"
            f"for i in range(3):\n    fd.create_dataset(f'im{{i}}.jpg/keypoints', data=np.zeros((5, 2)))\n"
            f"fd.flush()\nos.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", code])
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(path, "r")
    assert list_h5_names(path) == {"im0.jpg", "im1.jpg", "im2.jpg"}
    with open_h5(path, "a") as fd:
        fd.create_dataset("im3.jpg/keypoints", data=np.zeros((1, 2)))
    assert len(list_h5_names(path)) == 4


def test_outputs_carry_their_conf(tmp_path, photo_dir):
    """Another conf into the same file is refused; matches made from other features too."""
    from hndesc_loc import extract_features as ef, match_features as mf
    from hndesc_loc.io import write_pairs

    feats = tmp_path / "f.h5"
    ef.main(ef.confs["sift"], photo_dir, feature_path=feats)
    small = ef.parse_overrides(ef.confs["sift"], ["model.detector.max_keypoints=64"])
    with pytest.raises(ValueError, match="another configuration"):
        ef.main(small, photo_dir, feature_path=feats)
    write_pairs(tmp_path / "p.txt", [("a.jpg", "c.jpg"), ("a.jpg", "sub/b.png")])
    matches = mf.main(mf.confs["NN-mutual"], tmp_path / "p.txt", feats, matches=tmp_path / "m.h5")
    ef.main(small, photo_dir, feature_path=feats, overwrite=True)  # the user re-extracts
    with pytest.raises(ValueError, match="another configuration"):
        mf.main(mf.confs["NN-mutual"], tmp_path / "p.txt", feats, matches=matches)
    mf.main(mf.confs["NN-mutual"], tmp_path / "p.txt", feats, matches=matches, overwrite=True)
    from hndesc_loc.io import open_h5, read_matches
    with open_h5(matches) as fd:
        m, _ = read_matches(fd, "a.jpg", "c.jpg", (64, 64))
    assert m.max() < 64
    # Overrides name a new output: no clash with the default conf's file.
    assert ef.conf_with_overrides(ef.confs["sift"], ["model.detector.max_keypoints=64"])["output"] != ef.confs["sift"]["output"]


def test_ray_driver_resumes_after_a_real_kill(many_images, tmp_path):
    """The Ray driver (the only writer) killed with SIGKILL mid-run: the rerun (in-process)
    opens the file, skips the finished images and ends equal to a clean run."""
    pytest.importorskip("ray")
    from hndesc_loc import extract_features as ef

    feats = tmp_path / "feats.h5"
    code = ("from pathlib import Path\nfrom hndesc_loc import extract_features as ef\n"
            "from hndesc_loc.distributed import RayExecutor\n"
            f"ef.main(ef.confs['sift'], Path({str(many_images)!r}), feature_path=Path({str(feats)!r}), "
            "executor=RayExecutor(num_workers=1, chunk_size=1))")
    run_and_kill(code, signal.SIGKILL, 3, N_IMAGES, timeout=240)
    done = ef.list_h5_names(feats)
    assert 0 < len(done) < N_IMAGES
    ef.main(ef.confs["sift"], many_images, feature_path=feats)
    clean = ef.main(ef.confs["sift"], many_images, feature_path=tmp_path / "clean.h5")
    a, b = h5_content(feats), h5_content(clean)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_file_killed_past_its_recorded_end_is_rebuilt_from_its_complete_items(tmp_path):
    """The state a SIGKILL can leave (an object written past the end the superblock records,
    forged here by lowering that end): the writer's resume rebuilds the file from the items that
    still read completely, with their data and provenance, instead of failing to list it."""
    import struct

    import h5py

    from hndesc_loc.io import claim_file, list_h5_names, open_h5, write_item

    path = tmp_path / "feats.h5"
    items = {f"im{i}.jpg": np.full((50, 2), i, np.float32) for i in range(4)}
    claim_file(path, "conf A", False, "features")
    with open_h5(path, "a") as fd:
        for name, kpts in items.items():
            write_item(fd, name, {"keypoints": kpts}, {"w": 1})
    data = bytearray(path.read_bytes())
    assert data[8] == 0                               # superblock v0: end-of-file address at bytes 40-48
    end = struct.unpack("<Q", data[40:48])[0]
    data[40:48] = struct.pack("<Q", end - 600)
    path.write_bytes(bytes(data))
    with pytest.raises((RuntimeError, KeyError)):
        list_h5_names(path)
    claim_file(path, "conf A", False, "features")     # what extract / match do first on a rerun
    kept = list_h5_names(path)
    assert kept and kept < set(items)                 # the intact items, not the cut one
    with h5py.File(path, "r") as fd:
        assert fd.attrs["hndesc_loc_provenance"] == "conf A"
        for name in kept:
            np.testing.assert_array_equal(fd[name]["keypoints"][()], items[name])
            assert fd[name].attrs["w"] == 1
