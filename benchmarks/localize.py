"""localize_sfm speed and peak memory on the synthetic scene, and how both grow when the
database doubles (24 -> 48 database images, same queries).

    python benchmarks/localize.py
"""
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_isolated  # noqa: E402


def prepare(root: Path, num_db: int):
    from hndesc_loc.synthetic.scene import generate
    from pipelines import aachen

    scene = generate(root / f"scene{num_db}", {"num_db": num_db, "num_day_queries": 8, "num_night_queries": 8})
    return aachen.run(scene["aachen"], root / f"out{num_db}", num_covis=10, num_loc=10)


def localize(out: dict, results: Path):
    from hndesc_loc import localize_sfm

    t = time.perf_counter()
    localize_sfm.main(out["sfm_dir"], out["queries"], out["loc_pairs"], out["features"], out["loc_matches"], results)
    return time.perf_counter() - t


def main():
    root = Path(tempfile.mkdtemp())
    rows = []
    for num_db in (24, 48):
        out = prepare(root, num_db)
        nq = len(out["queries"].read_text().splitlines())
        _, mem, secs = run_isolated(localize, out, root / f"bench{num_db}.txt")
        rows.append((num_db, nq, nq / secs, mem))
    print(f"\n{'db images':>9s} {'queries':>7s} {'queries/s':>9s} {'peak RSS MiB':>12s}")
    for r in rows:
        print(f"{r[0]:9d} {r[1]:7d} {r[2]:9.2f} {r[3]:12.0f}")
    print(f"database x2: throughput x{rows[1][2] / rows[0][2]:.2f}, peak memory x{rows[1][3] / rows[0][3]:.2f}")


if __name__ == "__main__":
    main()
