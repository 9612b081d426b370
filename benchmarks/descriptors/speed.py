"""Featurisation speed: crystext ACE and crystal graphs against featomic, side by side in one run.

Cells: perov_5 perovskite geometries relabelled to Sr/Ti/O (3 species; SrTiO3-like cells if
the shared data is absent)
as 2x2x1 (20 atoms) and 5x4x2 (200 atoms) supercells, every atom rattled by 0.05 Å.
Same body-order-4 features on both sides: cutoff 5 Å, 6 orthonormal GTOs (featomic
``Gto(max_radial=5)`` through ``SoapSpliner`` with a Dirac-delta density), l <= 4,
ShiftedCosine(0.5 Å), no central-atom density. featomic computes ``SphericalExpansion``,
``SoapPowerSpectrum`` and ``clebsch_gordan.DensityCorrelations(n_correlations=2)``
(lambda=0, sigma=+1); crystext computes ``ACE(redundant=True).transform_atoms`` (the same
numbers per atom, featomic's layout, agreement is checked below) and the default unique set.

Usage: python benchmarks/descriptors/speed.py [--quick] [--out benchmarks/descriptors/speed.md]
Threads: one intra-op thread for torch and for featomic (RAYON_NUM_THREADS=1), because the
benchmark machine has 2 cores shared with other jobs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pymatgen.core import Lattice, Structure  # noqa: E402

from crystext.descriptors import ACE, CrystalGraph  # noqa: E402

torch.set_num_threads(1)
RC, NR, LMAX = 5.0, 6, 4


def perovskites(n: int) -> list[Structure]:
    """n perovskite cells: perov_5 geometries (3-element ABX3 rows) relabelled to Sr, Ti, O so
    every cell shares the same 3 species; cubic SrTiO3-like cells if the shared data is absent."""
    from crystext.settings import data_dir

    path = data_dir() / "perov_5" / "val.csv"
    out = []
    if path.is_file():
        import pandas as pd

        for cif in pd.read_csv(path, usecols=["cif"], nrows=400)["cif"]:
            s = Structure.from_str(cif, fmt="cif")
            amounts = s.composition.get_el_amt_dict()
            if len(amounts) != 3 or sorted(amounts.values()) != [1, 1, 3]:
                continue
            single = [el for el, k in amounts.items() if k == 1]
            rename = {single[0]: "Sr", single[1]: "Ti"} | {el: "O" for el, k in amounts.items() if k == 3}
            out.append(Structure(s.lattice, [rename[site.specie.symbol] for site in s], s.frac_coords))
            if len(out) == n:
                return out
    rng = np.random.default_rng(0)
    while len(out) < n:
        a = rng.uniform(3.8, 4.2)
        out.append(Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
                             [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]]))
    return out


def cells(n_atoms: int, count: int, seed: int) -> list[Structure]:
    scaling = {20: [2, 2, 1], 200: [5, 4, 2]}[n_atoms]
    rng = np.random.default_rng(seed)
    out = []
    for base in perovskites(count):
        s = base.copy()
        s.make_supercell(scaling)
        s = Structure(s.lattice, s.species, s.cart_coords + rng.normal(0, 0.05, (len(s), 3)), coords_are_cartesian=True)
        out.append(s)
    return out


def timeit(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


# ----------------------------------------------------------------------------- featomic
def featomic_setup():
    import featomic
    from featomic.basis import Gto, TensorProduct
    from featomic.clebsch_gordan import DensityCorrelations
    from featomic.cutoff import Cutoff, ShiftedCosine
    from featomic.density import DiracDelta
    from featomic.splines import SoapSpliner
    from metatensor import Labels

    class Gto0(Gto):  # exact r -> 0 limit of the derivative (featomic's divides by r)
        def compute_primitive(self, positions, n, *, derivative):
            r = np.asarray(positions, dtype=np.float64)
            s = self._gto_sigmas[n]
            val = r**n * np.exp(-0.5 * (r / s) ** 2)
            if not derivative:
                return val
            return (n * r ** (n - 1) if n > 0 else 0.0) * np.exp(-0.5 * (r / s) ** 2) - r / s**2 * val

    basis = TensorProduct(max_angular=LMAX, radial=Gto0(max_radial=NR - 1, radius=RC), spline_accuracy=1e-8)
    hypers = SoapSpliner(cutoff=Cutoff(radius=RC, smoothing=ShiftedCosine(width=0.5)),
                         density=DiracDelta(center_atom_weight=0.0), basis=basis).get_hypers()
    expansion = featomic.SphericalExpansion(**hypers)
    spectrum = featomic.SoapPowerSpectrum(**hypers)
    corr = DensityCorrelations(n_correlations=2, max_angular=2 * LMAX)
    keys = Labels(["o3_lambda", "o3_sigma"], np.array([[0, 1]], dtype=np.int32))

    def run(systems):
        dens = expansion.compute(systems)
        ps = spectrum.compute(systems)
        b3 = corr.compute(dens.keys_to_properties("neighbor_type"), angular_cutoff=LMAX, selected_keys=keys)
        return dens, ps, b3

    return run, featomic.__version__


def check_agreement(structures, run) -> float:
    """Max |featomic - (+-crystext)| over all nu = 3 invariants of ``structures`` (relative to max)."""
    from pymatgen.core import Element
    from pymatgen.io.ase import AseAtomsAdaptor

    ace = ACE(cutoff=RC, n_radial=NR, max_angular=LMAX, redundant=True).fit(structures)
    mine = ace.transform_atoms(structures)
    col = {(r.order, r.l, r.channels): i for i, r in enumerate(ace.feature_table().itertuples())}
    _, _, b3 = run([AseAtomsAdaptor.get_atoms(s) for s in structures])
    worst, scale = 0.0, 0.0
    for key, block in b3.items():
        ls = (int(key["l_1"]), int(key["l_2"]), int(key["l_3"]))
        props = block.properties.values.tolist()
        cols = [col[(3, ls, tuple((Element.from_Z(p[2 * k]).symbol, int(p[2 * k + 1])) for k in range(3)))] for p in props]
        got = np.array([mine[s][a, cols] for s, a in block.samples.values.tolist()])
        ref = block.values[:, 0, :]
        sign = np.sign((got * ref).sum())
        worst = max(worst, float(np.abs(sign * got - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
    return worst / scale


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (development)")
    ap.add_argument("--out", default=None, help="write the Markdown report here")
    ap.add_argument("--no-featomic", action="store_true")
    args = ap.parse_args(argv)
    rep = 3 if args.quick else 7
    lines: list[str] = []
    say = lambda s="": (print(s, flush=True), lines.append(s))  # noqa: E731

    small, large = cells(20, 16, 0), cells(200, 4, 1)
    ace_full = ACE(cutoff=RC, n_radial=NR, max_angular=LMAX, redundant=True, max_atoms_per_batch=100_000)
    ace_unique = ACE(cutoff=RC, n_radial=NR, max_angular=LMAX, max_atoms_per_batch=100_000)
    ace_full.fit(small + large)
    ace_unique.fit(small + large)
    species = ace_full.species_
    q = len(species) * NR
    rows = []  # (what, cell, seconds per structure list)

    featomic_run = None
    if not args.no_featomic:
        try:
            featomic_run, fver = featomic_setup()
        except ImportError:
            print("featomic not installed: pip install featomic==0.6.7", file=sys.stderr)
    rel = None
    if featomic_run is not None:
        rel = check_agreement(small[:2], featomic_run)

    def make_ace(redundant: bool, dtype: str) -> ACE:
        return ACE(cutoff=RC, n_radial=NR, max_angular=LMAX, redundant=redundant, dtype=dtype,
                   max_atoms_per_batch=100_000).fit(small + large)

    graph = CrystalGraph(cutoff=RC).fit(small + large)
    torch.manual_seed(0)
    enc = graph.encoder(hidden=64, n_layers=3, out_dim=64).eval()

    def graph_forward(group):
        with torch.no_grad():
            return enc(graph.batch(group))

    contenders = {}
    if featomic_run is not None:
        from pymatgen.io.ase import AseAtomsAdaptor

        contenders["featomic 0.6.7: SphericalExpansion + SoapPowerSpectrum + DensityCorrelations, per atom"] = (
            lambda s: featomic_run([AseAtomsAdaptor.get_atoms(s)]))
    for dtype in ("float64", "float32"):
        full, unique = make_ace(True, dtype), make_ace(False, dtype)
        contenders[f"ACE redundant=True (featomic's layout), per atom, {dtype}"] = lambda s, a=full: a.transform_atoms([s])
        contenders[f"ACE unique products, per structure, {dtype}"] = lambda s, a=unique: a.transform([s])
    contenders["CrystalGraph.batch + GraphEncoder forward (3 layers x 64), float32"] = lambda s: graph_forward([s])
    contenders["CrystalGraph.transform (training-free readout)"] = lambda s: graph.transform([s])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, group in (("20", small), ("200", large)):
            times = {what: [] for what in contenders}
            for what, fn in contenders.items():
                fn(group[0])  # warm-up (featomic splines and CG cache, e3nn 3j cache)
            # interleaved: every contender runs on the same structure back to back, so load
            # changes on the shared machine hit all of them alike; featomic only in round 0
            n_featomic = (4 if args.quick else 8) if name == "20" else (1 if args.quick else 3)
            for r in range(rep):
                for k, s in enumerate(group):
                    for what, fn in contenders.items():
                        if what.startswith("featomic") and (r > 0 or k >= n_featomic):
                            continue
                        t = time.perf_counter()
                        fn(s)
                        times[what].append(time.perf_counter() - t)
            rows += [(what, name, per) for what, per in times.items()]

        # batched throughput on 20-atom cells, batch sizes interleaved per round
        pool = cells(20, 64, 3)
        batched = {"ACE unique float64": make_ace(False, "float64").set_params(max_atoms_per_batch=1024),
                   "ACE unique float32": make_ace(False, "float32").set_params(max_atoms_per_batch=1024)}
        fns = {k: (lambda c, a=a: a.transform(c)) for k, a in batched.items()}
        fns["graph encoder forward"] = graph_forward
        sizes = (1, 4, 16, 64)
        per_bs = {(k, bs): [] for k in fns for bs in sizes}
        for r in range(max(2, rep // 2)):
            for bs in sizes:
                chunk = pool[:bs]
                for k, fn in fns.items():
                    if r == 0:
                        fn(chunk)
                    t = time.perf_counter()
                    fn(chunk)
                    per_bs[(k, bs)].append((time.perf_counter() - t) / bs)
        batch_rows = [(bs, *[statistics.median(per_bs[(k, bs)]) for k in fns]) for bs in sizes]

    say("# Descriptor featurisation speed (CPU)")
    say()
    say(f"Command: `python benchmarks/descriptors/speed.py{' --quick' if args.quick else ''}"
        f"{' --out ' + args.out if args.out else ''}`")
    say()
    say(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs; "
        f"torch {torch.__version__} with 1 intra-op thread, featomic with RAYON_NUM_THREADS=1. "
        f"Medians of per-structure wall times.")
    say()
    say(f"Features per atom (3 species x {NR} radial = {q} channels, l <= {LMAX}, cutoff {RC} Å): "
        f"ACE redundant {ace_full.n_atom_features_:,} (nu1 {q}, nu2 {q * q * (LMAX + 1):,}, nu3 "
        f"{ace_full.n_atom_features_ - q - q * q * (LMAX + 1):,}); ACE unique {ace_unique.n_atom_features_:,} "
        f"per atom, x {len(ace_unique.center_channels_)} centre elements per structure. featomic's "
        "DensityCorrelations output holds the same 81,648 nu3 numbers per atom.")
    if rel is not None:
        say(f"featomic {fver}: nu3 (DensityCorrelations) equals crystext's up to one sign per l-triple; "
            f"max deviation on two 20-atom cells {rel:.1e} of the largest value.")
    say()
    say("| featuriser | cell | timings | structures/s | ms/structure (median) | speed-up vs featomic |")
    say("|---|---|---|---|---|---|")
    ref = {name: statistics.median(per) for what, name, per in rows if what.startswith("featomic")}
    for what, name, per in rows:
        med = statistics.median(per)
        ratio = f"{ref[name] / med:.0f}x" if name in ref and not what.startswith("featomic") else ("1x" if what.startswith("featomic") else "")
        say(f"| {what} | {name} atoms | {len(per)} | {1 / med:.1f} | {med * 1e3:.1f} | {ratio} |")
    say()
    say("Batched throughput on 20-atom cells: structures/s for one call on a batch of that many "
        "structures (median over rounds; ACE per-structure features, graph = batch + forward):")
    say()
    say("| batch size | " + " | ".join(fns) + " |")
    say("|---" * (len(fns) + 1) + "|")
    for bs, *meds in batch_rows:
        say(f"| {bs} | " + " | ".join(f"{1 / m:.0f}" for m in meds) + " |")
    say()
    say("Notes: featomic's time is dominated by its Python Clebsch-Gordan machinery "
        "(metatensor blocks), so it barely grows from 20 to 200 atoms, while crystext's grows with "
        "the number of atoms. crystext's per-structure path fuses the atom pooling into GEMMs and "
        "never stores per-atom nu = 3 products; the per-atom path (featomic's layout, 81,648 nu3 "
        "numbers per atom, 133 MB per 200-atom cell in float64) is bound by memory traffic. "
        "Batched throughput grows from batch 1 to 4-16 (per-call overhead amortised) and no "
        "further: the per-atom tensor products, not Python, dominate, and at batch 64 it drops "
        "again (larger working sets; on this loaded 2-core machine not separable from noise). "
        "No GPU was lent to this task, so GPU figures are absent.")
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
