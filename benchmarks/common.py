"""Helpers shared by the benchmarks: test images at a fixed size, peak-memory measurement
in a child process (so that each method's peak RSS is its own)."""
import multiprocessing as mp
import queue
import resource
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


def make_images(out: Path, size: int = 1024, limit: int = 12) -> list[str]:
    """Real photos (../shared/data, or scikit-image's when absent) resized to `size` px."""
    out.mkdir(parents=True, exist_ok=True)
    srcs = sorted((SHARED / "sacre_coeur").glob("*.jpg")) + sorted((SHARED / "phototourism_sample_images").glob("*.jpg"))
    names = []
    if srcs:
        for p in srcs[:limit]:
            img = cv2.imread(str(p))
            s = size / max(img.shape[:2])
            cv2.imwrite(str(out / p.name), cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)),
                                                      interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC))
            names.append(p.name)
    else:
        import skimage.data

        for n in ("astronaut", "coffee", "rocket", "chelsea")[:limit]:
            img = getattr(skimage.data, n)()[:, :, ::-1]
            s = size / max(img.shape[:2])
            cv2.imwrite(str(out / f"{n}.jpg"), cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s))))
            names.append(f"{n}.jpg")
    return names


def variant_confs(variants: list[str]) -> dict:
    """{"CONF key=value ...": conf}: extract_features confs with overrides, for --variant."""
    from hndesc_loc import extract_features

    out = {}
    for v in variants:
        name, *overrides = v.split()
        if name not in extract_features.confs:
            raise SystemExit(f"--variant {v!r}: {name!r} is not a conf of extract_features "
                             f"(one of {sorted(extract_features.confs)}).")
        out[v] = extract_features.parse_overrides(extract_features.confs[name], overrides)
    return out


def _child(fn, args, queue):
    t = time.perf_counter()
    result = fn(*args)
    queue.put((time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, result))


def run_isolated(fn, *args):
    """Run fn(*args) in a fresh process: (seconds, peak RSS in MiB, result)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn, args, q))
    p.start()
    while True:  # a child that dies (an exception, the OOM killer) puts nothing: never wait for it forever
        try:
            out = q.get(timeout=1.0)
            break
        except queue.Empty:
            if not p.is_alive():
                raise RuntimeError(f"{getattr(fn, '__name__', fn)} died (exit code {p.exitcode}) before returning: "
                                   "see its traceback above.") from None
    p.join()
    return out
