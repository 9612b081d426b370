"""Memory of ``ACE()`` with its defaults on Matbench mp_e_form: features, bytes, peak RSS.

    python benchmarks/descriptors/ace_memory.py --n 3000            # a random sample
    python benchmarks/descriptors/ace_memory.py --n 0               # all 36,737 structures

Reads the structures of ``$CRYSTEXT_DATA/mp_e_form/{train,val,test}.csv``, fits ``ACE()`` (defaults)
on them, transforms them in one call, and prints the number of features, the result's bytes, the
peak resident memory of the process (``ru_maxrss``) and the memory held by the structures; the
whole-set estimate adds, to the measured peak, the structures and result rows of the structures not
sampled (the two things that grow with n).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import pandas as pd


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="structures (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import warnings

    from pymatgen.core import Structure

    from crystext.descriptors import ACE
    from crystext.settings import data_dir

    frames = [pd.read_csv(data_dir() / "mp_e_form" / f"{s}.csv") for s in ("train", "val", "test")]
    df = pd.concat(frames, ignore_index=True)
    total = len(df)
    if args.n:
        df = df.sample(n=args.n, random_state=args.seed)
    base = rss_mb()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structures = [Structure.from_str(c, fmt="cif") for c in df["cif"]]
    held = rss_mb() - base
    ace = ACE(on_error="nan").fit(structures)
    before = rss_mb()
    t0 = time.time()
    X = ace.transform(structures)
    seconds = time.time() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = len(structures)
    report = {
        "structures": n, "of": total, "elements": len(ace.species_), "features": ace.n_features_,
        "dtype": str(X.dtype), "result_MB": X.nbytes / 1e6, "bytes_per_structure": X.nbytes / n,
        "rss_before_structures_MB": round(base, 1), "structures_MB": round(held, 1),
        "rss_before_transform_MB": round(before, 1), "peak_rss_MB": round(peak, 1), "transform_s": round(seconds, 1),
        "finite_rows": int(np.isfinite(X).all(1).sum()),
        "whole_set_result_GB": ace.result_bytes(total) / 1e9,
        # what grows with n: the structures and the result; the rest (imports, the data frame, one
        # chunk's intermediates) does not
        "whole_set_peak_GB_estimate": round((peak + (held + X.nbytes / 1e6) * (total / n - 1)) / 1e3, 2),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
