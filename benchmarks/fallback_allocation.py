"""An object much larger than the object store, through fallback allocation.

    python3 benchmarks/fallback_allocation.py [--gib 2] [--store-mib 100]

Puts a ``--gib`` GiB numpy array on a node whose store holds ``--store-mib``
MiB, reads it in a task (zero-copy from the fallback file), drops the ref and
waits until the fallback file is gone. Prints the time of each step and the
fallback bytes the node reported.
"""

from __future__ import annotations

import argparse
import glob
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--store-mib", type=int, default=100)
    args = parser.parse_args()

    import numpy as np

    import ember
    from ember._private import runtime

    nbytes = int(args.gib * 1024**3)
    ember.init(num_cpus=2, object_store_memory=args.store_mib * 1024 * 1024)
    session = runtime.core_worker().session_dir

    def files() -> list[str]:
        return glob.glob(os.path.join(session, "fallback", "*", "*"))

    @ember.remote
    def summarize(array: np.ndarray) -> tuple[int, bool]:
        return int(array[:: 1 << 20].sum()), bool(array.flags.writeable)

    value = np.full(nbytes, 1, dtype=np.uint8)
    t0 = time.perf_counter()
    ref = ember.put(value)
    put_s = time.perf_counter() - t0
    del value
    reported = 0
    for _ in range(100):
        reported = sum(n["ObjectStoreFallback"] for n in ember.nodes() if n["Alive"])
        if reported:
            break
        time.sleep(0.05)
    t0 = time.perf_counter()
    total, writeable = ember.get(summarize.remote(ref))
    task_s = time.perf_counter() - t0
    assert total == len(range(0, nbytes, 1 << 20)) and not writeable
    t0 = time.perf_counter()
    local = ember.get(ref)
    get_s = time.perf_counter() - t0
    assert local.nbytes == nbytes
    del local
    on_disk = files()
    t0 = time.perf_counter()
    del ref
    while files():
        if time.perf_counter() - t0 > 60:
            raise SystemExit(f"fallback files still there after 60 s: {files()}")
        time.sleep(0.01)
    freed_s = time.perf_counter() - t0
    while sum(n["ObjectStoreFallback"] for n in ember.nodes() if n["Alive"]):
        if time.perf_counter() - t0 > 60:
            raise SystemExit("the node still reports fallback bytes after 60 s")
        time.sleep(0.01)
    reported_s = time.perf_counter() - t0
    ember.shutdown()
    print(f"{args.gib:g} GiB array through a {args.store_mib} MiB object store (fallback allocation)")
    print(f"put: {put_s:.2f} s ({nbytes / put_s / 1024**3:.2f} GiB/s) into {len(on_disk)} fallback file(s); "
          f"node report: {reported / 1024**3:.2f} GiB in fallback files")
    print(f"get in a task (zero-copy map, checksum every MiB): {task_s:.2f} s")
    print(f"get in the driver (zero-copy map): {get_s * 1000:.1f} ms")
    print(f"freed: file gone {freed_s * 1000:.0f} ms after the last ref was dropped, "
          f"node report at 0 bytes after {reported_s * 1000:.0f} ms")


if __name__ == "__main__":
    main()
