"""All file formats of the project: images, hloc feature/match HDF5 files, pair
lists, query lists with intrinsics, results files. Steps never re-implement these.

Conventions (hloc 1.5):
- features: one group per image named by its path relative to the image root, with
  `keypoints` [N,2] (origin at the centre of the top-left pixel), `descriptors` [D,N],
  `scores` [N], `image_size` [2] (w,h); global files hold `global_descriptor` [D].
- matches: group `name0.replace('/','-') + '/' + name1.replace('/','-')` with
  `matches0` [N0] (-1 = unmatched) and `matching_scores0` [N0].
- SfM pair correspondences (training): groups `pairs/<k>` with `correspondences` [N,4]
  (x0, y0, x1, y1) and attributes `name0`, `name1`; the root's provenance names the image folder.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import h5py
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff")
_STAGING = "__staging__"  # items are written here, then moved to their name once complete


def require_path(path: Path) -> Path:
    """`path`, or an error naming this machine (workers of a cluster need shared paths)."""
    if not Path(path).exists():
        import socket

        raise FileNotFoundError(f"{path} does not exist on node {socket.gethostname()}: a cluster must share the "
                                "dataset and output folders at the same paths (README, Running on a cluster).")
    return Path(path)


# ----------------------------------------------------------------------------- images
def jpeg_is_truncated(data: bytes) -> bool:
    """True for a JPEG whose last scan has no end-of-image marker after it. Inside entropy-coded
    data 0xFF is always stuffed (FF 00) or a restart marker, so FF D9 after the last start of scan
    (FF DA) exists only in a complete file (bytes after it are allowed); an EXIF thumbnail's own
    markers all come before the main image's scans."""
    if data[:2] != b"\xff\xd8":
        return False
    last_scan = data.rfind(b"\xff\xda")
    return last_scan > -1 and data.rfind(b"\xff\xd9") < last_scan   # no scan at all: the decoder's call


def read_image(path: Path, grayscale: bool = False) -> np.ndarray:
    """Read an image as RGB uint8 [H,W,3] (or [H,W] if grayscale); clear error if unreadable.

    The EXIF orientation is ignored: pixels come in their stored layout, the one COLMAP
    (cameras, image sizes), the benchmarks' intrinsics and hloc's `image_size` refer to."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image {path} does not exist: check image_dir / the image list.")
    mode = (cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
    data = path.read_bytes()
    if jpeg_is_truncated(data):
        raise ValueError(
            f"Image {path} is truncated (a JPEG cut before its end marker, e.g. an interrupted copy): "
            "OpenCV would decode it with grey filling. Copy it again or remove it (or drop it from the "
            "image list) and rerun."
        )
    image = cv2.imdecode(np.frombuffer(data, np.uint8), mode)  # the decoder of cv2.imread, same pixels
    if image is None or image.size == 0:
        raise ValueError(
            f"Cannot decode image {path}: the file is corrupt or not an image. "
            "Replace or remove it (or drop it from the image list) and rerun."
        )
    if not grayscale:
        image = image[:, :, ::-1].copy()  # BGR -> RGB
    return image


def list_images(root: Path, prefix: str = "") -> list[str]:
    """Image names (posix paths relative to `root`) under `root/prefix`, sorted."""
    root = Path(root)
    base = root / prefix if prefix else root
    if not base.is_dir():
        raise FileNotFoundError(f"Image folder {base} does not exist.")
    names = sorted(
        p.relative_to(root).as_posix()
        for p in base.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not names:
        raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under {base}.")
    check_names(names, base)
    return names


def check_names(names: Iterable[str], where) -> None:
    """Refuse image names with whitespace: pair and query lists are whitespace-separated
    (hloc's formats), so such names cannot round-trip through them."""
    bad = [n for n in names if any(c.isspace() for c in n)]
    if bad:
        raise ValueError(f"{len(bad)} image name(s) in {where} contain whitespace, e.g. {bad[0]!r}: pair and query "
                         "files separate names by spaces; rename the files (e.g. spaces to '_') and rerun.")


# -------------------------------------------------------------------------- HDF5 files
def open_h5(path: Path, mode: str = "r") -> h5py.File:
    """Open an HDF5 file; a corrupt file gets a clear error.

    Files are written with the default (earliest) format bounds, not hloc's libver='latest':
    the latter marks the file 'open for write' in its superblock, and a process killed with
    SIGKILL leaves that mark behind, which makes the file unopenable. Files that carry such
    a stale mark (older runs, other tools) are recovered: the mark is cleared in place
    (`_recover_stale_write_mark`)."""
    path = Path(path)
    if mode == "r" and not path.exists():
        raise FileNotFoundError(f"HDF5 file {path} does not exist.")
    try:
        fd = h5py.File(str(path), mode)
    except OSError as e:
        if "already open for write" not in str(e):
            raise OSError(f"Cannot open HDF5 file {path} ({e}): the file is corrupt; delete it and rerun.") from e
        _recover_stale_write_mark(path)
        fd = h5py.File(str(path), mode)
    if mode != "r" and _STAGING in fd:
        del fd[_STAGING]  # leftovers of a killed run: never trusted
    return fd


def _lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 `hashlittle`, the checksum of HDF5's superblock (H5_checksum_lookup3)."""
    M = 0xFFFFFFFF

    def rot(x, k):
        return ((x << k) | (x >> (32 - k))) & M

    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & M
    i = 0
    while length - i > 12:
        a = (a + int.from_bytes(data[i:i + 4], "little")) & M
        b = (b + int.from_bytes(data[i + 4:i + 8], "little")) & M
        c = (c + int.from_bytes(data[i + 8:i + 12], "little")) & M
        a = (a - c) & M; a ^= rot(c, 4); c = (c + b) & M
        b = (b - a) & M; b ^= rot(a, 6); a = (a + c) & M
        c = (c - b) & M; c ^= rot(b, 8); b = (b + a) & M
        a = (a - c) & M; a ^= rot(c, 16); c = (c + b) & M
        b = (b - a) & M; b ^= rot(a, 19); a = (a + c) & M
        c = (c - b) & M; c ^= rot(b, 4); b = (b + a) & M
        i += 12
    tail = data[i:] + bytes(12 - (length - i))
    if length - i == 0:
        return c
    a = (a + int.from_bytes(tail[0:4], "little")) & M
    b = (b + int.from_bytes(tail[4:8], "little")) & M
    c = (c + int.from_bytes(tail[8:12], "little")) & M
    c ^= b; c = (c - rot(b, 14)) & M
    a ^= c; a = (a - rot(c, 11)) & M
    b ^= a; b = (b - rot(a, 25)) & M
    c ^= b; c = (c - rot(b, 16)) & M
    a ^= c; a = (a - rot(c, 4)) & M
    b ^= a; b = (b - rot(a, 14)) & M
    c ^= b; c = (c - rot(b, 24)) & M
    return c


def _recover_stale_write_mark(path: Path) -> None:
    """Clear the 'open for write' flags of a version-2/3 superblock (what `h5clear -s` does)
    and rewrite its checksum. Items are written atomically and flushed one by one, so the
    file's content is that of the last complete item."""
    import logging

    logging.getLogger("hndesc_loc").warning("%s was left open for write by a killed run: clearing the mark.", path)
    signature = b"\x89HDF\r\n\x1a\n"
    with open(path, "r+b") as f:
        head = f.read(4096)
        base = next((o for o in (0, 512, 1024, 2048) if head[o:o + 8] == signature), None)
        if base is None or head[base + 8] not in (2, 3):
            raise OSError(f"Cannot recover HDF5 file {path}: unexpected superblock; delete it and rerun.")
        size_of_offsets = head[base + 9]
        end = base + 12 + 4 * size_of_offsets  # flags at +11, then 4 addresses, then the checksum
        block = bytearray(head[base:end])
        block[11] = 0
        f.seek(base + 11)
        f.write(bytes([0]))
        f.seek(end)
        f.write(_lookup3(bytes(block)).to_bytes(4, "little"))


def _list_groups(fd: h5py.File) -> set[str]:
    names: set[str] = set()

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            parent = name.rsplit("/", 1)[0]
            if not parent.startswith(_STAGING):
                names.add(parent)

    fd.visititems(visit)
    return names


def _salvage(path: Path) -> int:
    """Rebuild `path` from its items that still read completely; returns how many were kept.
    A run killed between HDF5 writing an object to disk and recording the file's new end leaves
    objects past that end, and listing the file fails; the items written before are intact."""
    import logging

    tmp = path.with_name(f".{path.name}.salvage")
    kept = 0

    def copy(group, prefix: str, dst: h5py.File):
        nonlocal kept
        try:
            keys = list(group.keys())
        except (RuntimeError, KeyError, OSError):
            return
        for key in keys:
            if not prefix and key == _STAGING:
                continue
            try:
                obj = group[key]
                if not isinstance(obj, h5py.Group):
                    continue
                dsets = {k: v for k, v in obj.items() if isinstance(v, h5py.Dataset)}
                if dsets:
                    write_item(dst, prefix + key, {k: v[()] for k, v in dsets.items()}, dict(obj.attrs),
                               {k: dict(v.attrs) for k, v in dsets.items()})
                    kept += 1
            except (RuntimeError, KeyError, OSError, ValueError):
                continue  # unreadable: left for the rerun to recompute
            copy(obj, f"{prefix}{key}/", dst)

    with h5py.File(str(path), "r") as src, h5py.File(str(tmp), "w") as dst:
        dst.attrs.update(dict(src.attrs))
        copy(src, "", dst)
    tmp.replace(path)
    logging.getLogger("hndesc_loc").warning(
        "%s was cut short by a killed run: rebuilt from its %d complete items; the rest is recomputed.", path, kept)
    return kept


def list_h5_names(path: Path) -> set[str]:
    """Names of all items (groups holding datasets) in a feature or match file."""
    path = Path(path)
    if not path.exists():
        return set()
    with open_h5(path) as fd:
        return _list_groups(fd)


def write_item(fd: h5py.File, name: str, data: dict[str, np.ndarray], attrs: dict | None = None,
               dataset_attrs: dict[str, dict] | None = None) -> None:
    """Write one item atomically at the HDF5 level: datasets go to a staging group
    that is moved to `name` only when complete, so a killed run never leaves a
    partial item that skip-existing would trust."""
    tmp = f"{_STAGING}/{uuid.uuid4().hex}"
    grp = fd.create_group(tmp)
    for key, value in data.items():
        dset = grp.create_dataset(key, data=value)
        for k, v in (dataset_attrs or {}).get(key, {}).items():
            dset.attrs[k] = v
    for k, v in (attrs or {}).items():
        grp.attrs[k] = v
    if name in fd:
        del fd[name]
    parent = name.rsplit("/", 1)[0] if "/" in name else None
    if parent is not None and parent not in fd:
        fd.create_group(parent)
    fd.move(tmp, name)
    if not len(fd[_STAGING]):
        del fd[_STAGING]
    fd.flush()


def get_keypoints(path: Path, name: str, return_uncertainty: bool = False):
    with open_h5(path) as fd:
        if name not in fd:
            raise KeyError(f"Image '{name}' is not in feature file {path}: extract features for it first.")
        dset = fd[name]["keypoints"]
        kpts = dset.__array__()
        unc = dset.attrs.get("uncertainty")
    return (kpts, unc) if return_uncertainty else kpts


# ------------------------------------------------------------------------- provenance
PROVENANCE = "hndesc_loc_provenance"  # root attribute: JSON of what made the file's items


def provenance_string(record: dict) -> str:
    import json

    return json.dumps(record, sort_keys=True, default=str)


def read_provenance(path: Path) -> str | None:
    if not Path(path).exists():
        return None
    with open_h5(path) as fd:
        return fd.attrs.get(PROVENANCE)


def claim_file(path: Path, provenance: str, overwrite: bool, what: str) -> None:
    """Make `path` an output of `provenance`: a new file records it; a file made by the same
    provenance is resumed; one made by another is replaced when `overwrite`, else refused
    (its items would be silently reused). Files without a record (hloc's, older runs) are
    adopted with a warning."""
    import logging

    path = Path(path)
    old = None
    if path.exists():
        try:
            with open_h5(path) as fd:
                old, n = fd.attrs.get(PROVENANCE), len(_list_groups(fd))
        except (RuntimeError, KeyError):   # objects past the file's recorded end (killed run)
            _salvage(path)
            with open_h5(path) as fd:
                old, n = fd.attrs.get(PROVENANCE), len(_list_groups(fd))
        if old == provenance:
            return  # resumed as is: the file is not touched
        if old is not None and old != provenance and n:  # an empty file is anyone's
            if not overwrite:
                raise ValueError(
                    f"{path} holds {what} made with another configuration (stored: {old[:300]}); "
                    "use --overwrite to replace them, or another output path.")
            path.unlink()
        elif old is None and n:
            logging.getLogger("hndesc_loc").warning(
                "%s has no provenance record (made by hloc or an older version): its %d items are reused.", path, n)
    with open_h5(path, "a") as fd:
        fd.attrs[PROVENANCE] = provenance


@contextlib.contextmanager
def claimed(path: Path, provenance: str, overwrite: bool, what: str):
    """`claim_file`, and if the block raises before a first item is written to a file this claim
    created, the file is removed: a failed start (bad conf, mismatched inputs) leaves nothing
    behind. Items already written stay, for the rerun to skip."""
    path = Path(path)
    existed = path.exists()
    claim_file(path, provenance, overwrite, what)
    try:
        yield path
    except BaseException:
        if not existed and path.exists() and not list_h5_names(path):
            path.unlink()
        raise


# ---------------------------------------------------------------------------- matches
def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def names_to_pair_old(name0: str, name1: str) -> str:
    return names_to_pair(name0, name1, separator="_")


def find_pair(fd: h5py.File, name0: str, name1: str) -> tuple[str, bool] | None:
    """Key of a pair in a match file and whether it is stored reversed; None if absent."""
    for key, reverse in (
        (names_to_pair(name0, name1), False),
        (names_to_pair(name1, name0), True),
        (names_to_pair_old(name0, name1), False),
        (names_to_pair_old(name1, name0), True),
    ):
        if key in fd and "matches0" in fd[key]:
            return key, reverse
    return None


def read_matches(fd: h5py.File, name0: str, name1: str,
                 num_keypoints: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """From an open match file: matches [M,2] (indices into name0, name1, whatever order the
    pair is stored in) and their scores [M]. Keeping the handle open avoids reopening per pair.
    `num_keypoints` (of name0, name1): indices beyond them are an error (stale matches)."""
    found = find_pair(fd, name0, name1)
    if found is None:
        raise KeyError(f"Pair ({name0}, {name1}) not found in match file {fd.filename}: "
                       "run match_features on the same pairs.")
    key, reverse = found
    matches = fd[key]["matches0"][()]
    scores = fd[key]["matching_scores0"][()]
    idx = np.where(matches != -1)[0]
    m = np.stack([idx, matches[idx]], -1).reshape(-1, 2)
    if reverse:
        m = np.ascontiguousarray(m[:, ::-1])
    if num_keypoints is not None and len(m) and (m[:, 0].max() >= num_keypoints[0] or m[:, 1].max() >= num_keypoints[1]):
        raise ValueError(f"Matches of ({name0}, {name1}) in {fd.filename} index keypoints beyond the "
                         f"{num_keypoints} of the feature file: they were computed from other features; "
                         "rerun match_features with --overwrite.")
    return m, scores[idx]


def get_matches(path: Path, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """Matches [M,2] (indices into name0, name1) and scores [M]."""
    with open_h5(path) as fd:
        return read_matches(fd, name0, name1)


# ------------------------------------------------------------------------------ pairs
def parse_pairs(path: Path) -> list[tuple[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Pair file {path} does not exist.")
    pairs = []
    for i, line in enumerate(path.read_text().splitlines()):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2:
            raise ValueError(f"{path}:{i + 1}: expected 'name0 name1', got '{line}'.")
        pairs.append((parts[0], parts[1]))
    if not pairs:
        raise ValueError(f"Pair file {path} is empty: nothing to match. Check the step that wrote it.")
    return pairs


def parse_retrieval(path: Path) -> dict[str, list[str]]:
    retrieval: dict[str, list[str]] = {}
    for q, r in parse_pairs(path):
        retrieval.setdefault(q, []).append(r)
    return retrieval


def write_pairs(path: Path, pairs: Iterable[tuple[str, str]]) -> None:
    pairs = list(pairs)
    check_names((n for p in pairs for n in p), path)
    if not pairs:
        raise ValueError(f"No pairs to write to {path}.")
    write_text_atomic(path, "".join(f"{a} {b}\n" for a, b in pairs))


# ------------------------------------------------------------------ queries, results
def parse_image_list_with_intrinsics(path: Path) -> list[tuple[str, "object"]]:
    """Parse `name MODEL w h params...` lines into (name, pycolmap.Camera)."""
    import pycolmap

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Query list {path} does not exist.")
    out = []
    for i, line in enumerate(path.read_text().splitlines()):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, model, w, h, *params = line.split()
        try:
            camera = pycolmap.Camera(model=model, width=int(w), height=int(h), params=[float(p) for p in params])
        except Exception as e:  # pycolmap raises on unknown models / wrong param counts
            raise ValueError(f"{path}:{i + 1}: invalid camera '{model}' with {len(params)} params ({e}).") from e
        if not camera.verify_params():
            raise ValueError(f"{path}:{i + 1}: camera model {model} expects a different number of params than {len(params)}.")
        out.append((name, camera))
    if not out:
        raise ValueError(f"Query list {path} is empty.")
    return out


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file through a temporary name so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`, renamed to `path` on success only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                import shutil

                shutil.rmtree(tmp)
            else:
                tmp.unlink()


def write_poses(path: Path, poses: dict[str, "object"]) -> None:
    """Results file of visuallocalization.net: `name qw qx qy qz tx ty tz` (cam_from_world)."""
    lines = []
    for name, cam_from_world in poses.items():
        qx, qy, qz, qw = cam_from_world.rotation.quat  # pycolmap: xyzw
        tx, ty, tz = cam_from_world.translation
        lines.append(f"{name} {qw} {qx} {qy} {qz} {tx} {ty} {tz}\n")
    write_text_atomic(path, "".join(lines))


def read_poses(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read a results file into name -> (qvec wxyz, tvec)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        name, *vals = line.split()
        vals = np.array(vals, float)
        out[name] = (vals[:4], vals[4:7])
    return out


# ------------------------------------------------------------ SfM pair correspondences
def write_sfm_pairs(path: Path, pairs: dict[tuple[str, str], np.ndarray], record: dict) -> None:
    """Write {(name0, name1): [N,4] (x0, y0, x1, y1)} with `record` (must hold 'image_dir') as
    the file's provenance, through a temporary file (a killed run leaves no file)."""
    if "image_dir" not in record:
        raise ValueError("An SfM pair file records the image folder its names are relative to ('image_dir').")
    with atomic_path(Path(path)) as tmp:
        with h5py.File(str(tmp), "w") as fd:
            fd.attrs[PROVENANCE] = provenance_string(record)
            for k, ((n0, n1), corr) in enumerate(sorted(pairs.items())):
                grp = fd.create_group(f"pairs/{k}")
                grp.create_dataset("correspondences", data=np.asarray(corr, np.float32).reshape(-1, 4))
                grp.attrs["name0"], grp.attrs["name1"] = n0, n1


def read_sfm_pairs(path: Path) -> tuple[dict[tuple[str, str], np.ndarray], dict]:
    """({(name0, name1): [N,4] float32}, provenance record) of a file of `write_sfm_pairs`."""
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SfM pair file {path} does not exist: make it with `python -m hndesc_loc.train.sfm_pairs`.")
    if not h5py.is_hdf5(str(path)):
        raise ValueError(f"{path} is not an SfM pair file (not HDF5): make it with `python -m hndesc_loc.train.sfm_pairs`.")
    with open_h5(path) as fd:
        if PROVENANCE not in fd.attrs or "pairs" not in fd:
            raise ValueError(f"{path} is not an SfM pair file: make it with `python -m hndesc_loc.train.sfm_pairs`.")
        record = json.loads(fd.attrs[PROVENANCE])
        pairs = {(str(g.attrs["name0"]), str(g.attrs["name1"])): g["correspondences"][()] for g in fd["pairs"].values()}
    return pairs, record
