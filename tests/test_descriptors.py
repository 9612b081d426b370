"""ACE invariants, crystal graphs and the CHGNet branch: symmetries, smoothness, reference values, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from crystext.descriptors import ACE, CrystalGraph, IsolatedAtomWarning, OverlappingAtomsError, neighbor_list
from crystext.errors import ConfigError, CrystextError, UnknownElementError

torch.set_num_threads(1)


def random_structure(seed: int, n: int = 5, species=("Na", "Cl", "O"), min_dist: float = 1.3) -> Structure:
    """A random triclinic cell (volume ~14 A^3/atom) with no two atoms closer than ``min_dist``."""
    rng = np.random.default_rng(seed)
    a = (14.0 * n) ** (1 / 3)
    lat = Lattice(np.eye(3) * a + rng.normal(0, 0.25, (3, 3)))
    while True:
        s = Structure(lat, list(rng.choice(species, n)), rng.uniform(size=(n, 3)))
        d = s.distance_matrix + np.eye(n) * 99
        if d.min() > min_dist and len(s.composition) == len(species):
            return s


def random_rotation(seed: int, proper: bool = True) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) > 0) != proper:
        q[:, 0] *= -1
    return q


def rotated(s: Structure, rot: np.ndarray) -> Structure:
    """Same crystal with lattice vectors and positions rotated (fractional coordinates unchanged)."""
    return Structure(Lattice(s.lattice.matrix @ rot.T), s.species, s.frac_coords)


@pytest.fixture(scope="module")
def structures():
    return [random_structure(s) for s in (1, 2, 3)]


@pytest.fixture(scope="module")
def ace(structures):
    return ACE(cutoff=4.5, n_radial=4, max_angular=3).fit(structures)


# ----------------------------------------------------------------------------- ACE: layout
def test_ace_layout_and_labels(ace, structures):
    assert ace.species_ == ["O", "Na", "Cl"]  # learned by fit, ordered by Z
    X = ace.transform(structures)
    assert X.shape == (3, ace.n_features_) and np.all(np.isfinite(X))
    labels = ace.feature_labels()
    assert len(labels) == X.shape[1] == len(set(labels))
    assert labels[0].startswith("center=") and "nu1" in labels[0]
    # unique channel products: Q(Q+1)/2 pairs per l for nu = 2
    q = 3 * 4
    table = ace.feature_table()
    assert (table.order == 2).sum() == 4 * q * (q + 1) // 2
    assert set(table[table.order == 3].l) == {(0, 0, 0), (0, 1, 1), (0, 2, 2), (0, 3, 3), (1, 1, 2), (1, 2, 3), (2, 2, 2), (2, 3, 3)}
    atoms = ace.transform_atoms(structures)
    assert [a.shape for a in atoms] == [(5, ace.n_atom_features_)] * 3
    # per-structure mean with centre split == per-atom features averaged per centre element
    sym = [site.specie.symbol for site in structures[0]]
    for c, name in enumerate(ace.center_channels_):
        block = X[0, c * ace.n_atom_features_ : (c + 1) * ace.n_atom_features_]
        expect = atoms[0][[i for i, s in enumerate(sym) if s == name]].sum(0) / len(sym)
        np.testing.assert_allclose(block, expect, atol=1e-12)


def test_ace_not_fitted_and_bad_params():
    with pytest.raises(ConfigError, match="not fitted"):
        ACE().transform([random_structure(1)])
    with pytest.raises(ConfigError, match="correlation_order"):
        ACE(correlation_order=4).fit([random_structure(1)])
    with pytest.raises(ConfigError, match="features"):  # one-hot nu=3 over many elements explodes
        ACE(species=[f"{e}" for e in "H Li Be B C N O F Na Mg Al Si P S Cl K Ca Ti Fe Cu".split()], n_radial=8, species_table=None).fit()
    with pytest.raises(ConfigError, match="species_table"):
        ACE(species_table="magpie").fit([random_structure(1)])


# ----------------------------------------------------------------------------- ACE: invariances
@pytest.mark.parametrize("radial", ["gto", "bessel"])
def test_ace_rotation_reflection_translation_permutation(structures, radial):
    ace = ACE(cutoff=4.5, n_radial=4, max_angular=3, radial=radial).fit(structures)
    s = structures[0]
    ref = ace.transform([s])
    ref_atoms = ace.transform_atoms([s])[0]
    scale = np.abs(ref).max()
    assert scale > 1e-3
    for k, rot in enumerate([random_rotation(7), random_rotation(8, proper=False)]):
        np.testing.assert_allclose(ace.transform([rotated(s, rot)]), ref, atol=1e-10 * scale, err_msg=f"rotation {k}")
    shifted = Structure(s.lattice, s.species, s.frac_coords + np.array([0.31, -0.17, 0.52]))
    np.testing.assert_allclose(ace.transform([shifted]), ref, atol=1e-10 * scale)
    perm = np.random.default_rng(0).permutation(len(s))
    permuted = Structure(s.lattice, [s.species[i] for i in perm], s.frac_coords[perm])
    np.testing.assert_allclose(ace.transform([permuted]), ref, atol=1e-10 * scale)
    np.testing.assert_allclose(ace.transform_atoms([permuted])[0], ref_atoms[perm], atol=1e-10 * scale)


def test_ace_periodic_cell_choice(structures):
    s = structures[1]
    ace = ACE(cutoff=4.5, n_radial=4, max_angular=3).fit([s])
    ref = ace.transform([s])
    # a supercell and a sheared (non-diagonal) supercell describe the same crystal
    for scaling in ([2, 1, 2], [[1, 1, 0], [0, 1, 0], [0, 1, 2]]):
        sc = s.copy()
        sc.make_supercell(scaling)
        np.testing.assert_allclose(ace.transform([sc]), ref, atol=1e-10 * np.abs(ref).max())
    total = ACE(cutoff=4.5, n_radial=4, max_angular=3, pooling="sum").fit([s])
    sc = s.copy()
    sc.make_supercell([2, 1, 1])
    once = total.transform([s])
    np.testing.assert_allclose(total.transform([sc]), 2 * once, atol=1e-10 * np.abs(once).max())
    # a reduced (LLL) cell of a primitive fcc crystal equals the conventional 4-atom cell
    conv = Structure(Lattice.cubic(5.6), ["Na"] * 4 + ["Cl"] * 4,
                     [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0], [.5, .5, .5], [.5, 0, 0], [0, .5, 0], [0, 0, .5]])
    prim = conv.get_primitive_structure()
    assert len(prim) == 2
    nacl = ACE(cutoff=6.0, n_radial=4, max_angular=4).fit([conv])
    np.testing.assert_allclose(nacl.transform([prim]), nacl.transform([conv]), atol=1e-10)


def test_ace_is_smooth_at_the_cutoff():
    """A third atom crossing r_cut changes the features continuously; beyond r_cut it is absent."""
    rc = 4.0
    lat = Lattice.cubic(30.0)  # images far beyond the cutoff

    def trio(d):
        return Structure(lat, ["Na", "Cl", "O"], np.array([[0, 0, 0], [2.3, 0, 0], [-0.6 * d, 0.8 * d, 0]]) / 30.0, coords_are_cartesian=False)

    ace = ACE(cutoff=rc, n_radial=4, max_angular=3, cutoff_width=1.0, center_split=False).fit([trio(3.0)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IsolatedAtomWarning)
        # the O atom is > rc from Cl for these d; its distance to Na is d
        f = {d: ace.transform([trio(d)])[0] for d in (rc - 0.5, rc - 1e-3, rc - 1e-5, rc + 1e-5, rc + 0.5)}
    far = f[rc + 0.5]
    np.testing.assert_array_equal(f[rc + 1e-5], far)
    assert np.abs(f[rc - 0.5] - far).max() > 1e-3  # inside the switching region it matters
    jump3 = np.abs(f[rc - 1e-3] - far).max()
    jump5 = np.abs(f[rc - 1e-5] - far).max()
    assert jump3 < 1e-5 and jump5 < 1e-9  # ~ (rc - d)^2: value and slope both vanish at rc


def test_ace_gradients_flow_through_positions(structures):
    ace = ACE(cutoff=4.5, n_radial=3, max_angular=2, correlation_order=3, dtype="float64").fit(structures)
    ace._prepare()
    nb = neighbor_list(structures[0], 4.5)
    vec = torch.tensor(nb.vectors, requires_grad=True)
    w = torch.as_tensor(ace._weights(nb.numbers, "x")[nb.neighbors])

    def energy(v):
        a = ace.atomic_basis(v, torch.as_tensor(nb.centers), w, nb.n_atoms)
        return sum(b.sum() for b in ace.invariants(a))

    assert torch.autograd.gradcheck(energy, (vec,), eps=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- ACE vs featomic
def _featomic_hypers(featomic, rc, n_radial, max_angular):
    from featomic.basis import Gto, TensorProduct
    from featomic.cutoff import Cutoff, ShiftedCosine
    from featomic.density import DiracDelta
    from featomic.splines import SoapSpliner

    class Gto0(Gto):
        """featomic's Gto derivative divides by r; give the exact limit at r = 0 for the spline."""

        def compute_primitive(self, positions, n, *, derivative):
            r = np.asarray(positions, dtype=np.float64)
            s = self._gto_sigmas[n]
            val = r**n * np.exp(-0.5 * (r / s) ** 2)
            if not derivative:
                return val
            return (n * r ** (n - 1) if n > 0 else 0.0) * np.exp(-0.5 * (r / s) ** 2) - r / s**2 * val

    basis = TensorProduct(max_angular=max_angular, radial=Gto0(max_radial=n_radial - 1, radius=rc), spline_accuracy=1e-11)
    spliner = SoapSpliner(cutoff=Cutoff(radius=rc, smoothing=ShiftedCosine(width=0.5)),
                          density=DiracDelta(center_atom_weight=0.0), basis=basis)
    return spliner.get_hypers()


def test_ace_matches_featomic(structures):
    featomic = pytest.importorskip("featomic")
    pytest.importorskip("featomic.clebsch_gordan")
    from metatensor import Labels
    from pymatgen.core import Element
    from pymatgen.io.ase import AseAtomsAdaptor

    rc, nr, lmax = 4.5, 4, 3
    ace = ACE(cutoff=rc, n_radial=nr, max_angular=lmax, cutoff_width=0.5, redundant=True).fit(structures)
    hypers = _featomic_hypers(featomic, rc, nr, lmax)
    systems = [AseAtomsAdaptor.get_atoms(s) for s in structures]
    mine = ace.transform_atoms(structures)
    col = {(r.order, r.l, r.channels): i for i, r in enumerate(ace.feature_table().itertuples())}
    sym = lambda z: Element.from_Z(int(z)).symbol  # noqa: E731

    # A basis (per centre, neighbour species, l; all m and n)
    ace._prepare()
    basis = []
    for chunk in ace._chunks(structures):
        a, offsets, _ = ace._batch_basis(chunk)
        basis += [a[lo:hi].numpy() for lo, hi in zip(offsets[:-1], offsets[1:])]
    expansion = featomic.SphericalExpansion(**hypers).compute(systems)
    checked = 0
    for key, block in expansion.items():
        l, nt = int(key["o3_lambda"]), ace.channels_.index(sym(key["neighbor_type"]))
        for (system, atom), ref in zip(block.samples.values.tolist(), block.values):
            got = basis[system][atom, nt * nr : (nt + 1) * nr, l * l : (l + 1) ** 2].T
            np.testing.assert_allclose(got, ref, atol=1e-9, rtol=0)
            checked += 1
    assert checked >= 3 * 15 * (lmax + 1) - 20

    # power spectrum: featomic = (-1)^l / sqrt(2l+1) * sum_m A A, times sqrt(2) for unlike species
    spectrum = featomic.SoapPowerSpectrum(**hypers).compute(systems)
    n_values = 0
    for key, block in spectrum.items():
        s1, s2 = sym(key["neighbor_1_type"]), sym(key["neighbor_2_type"])
        for p, (l, n1, n2) in enumerate(block.properties.values.tolist()):
            c = col[(2, (l, l), ((s1, n1), (s2, n2)))]
            factor = (-1) ** l / np.sqrt(2 * l + 1) * (np.sqrt(2) if s1 != s2 else 1.0)
            got = np.array([mine[sy][at, c] for sy, at in block.samples.values.tolist()])
            np.testing.assert_allclose(factor * got, block.values[:, p], atol=1e-10, rtol=0)
            n_values += len(got)
    assert n_values > 1000

    # body order 4: DensityCorrelations' lambda=0, sigma=+1 blocks == B3 up to one sign per l-triple
    from featomic.clebsch_gordan import DensityCorrelations

    density = expansion.keys_to_properties("neighbor_type")
    corr = DensityCorrelations(n_correlations=2, max_angular=2 * lmax).compute(
        density, angular_cutoff=lmax, selected_keys=Labels(["o3_lambda", "o3_sigma"], np.array([[0, 1]], dtype=np.int32))
    )
    signs = {}
    for key, block in corr.items():
        ls = (int(key["l_1"]), int(key["l_2"]), int(key["l_3"]))
        cols = [col[(3, ls, tuple((sym(p[2 * k]), int(p[2 * k + 1])) for k in range(3)))] for p in block.properties.values.tolist()]
        got = np.array([mine[sy][at, cols] for sy, at in block.samples.values.tolist()])
        ref = block.values[:, 0, :]
        ratio = float((got * ref).sum() / (got * got).sum())
        assert abs(abs(ratio) - 1) < 1e-9, (ls, ratio)
        sign = signs.setdefault(ls, np.sign(ratio))  # the same sign for every centre species
        assert sign == np.sign(ratio)
        np.testing.assert_allclose(sign * got, ref, atol=1e-10, rtol=0)
    assert len(signs) == 8 and len(corr) == 3 * 8


# ----------------------------------------------------------------------------- bad structures
def test_isolated_atom_gives_zeros_and_a_warning():
    s = Structure(Lattice.cubic(12.0), ["Na", "Cl", "O"], [[0, 0, 0], [0.2, 0, 0], [0.5, 0.5, 0.5]])
    ace = ACE(cutoff=4.0, n_radial=3, max_angular=3).fit([s])
    with pytest.warns(IsolatedAtomWarning, match=r"1 atom\(s\) \[2\] have no neighbour within 4.0"):
        atoms = ace.transform_atoms([s])[0]
    assert np.all(atoms[2] == 0) and np.abs(atoms[0]).max() > 0
    graph = CrystalGraph(cutoff=4.0).fit([s])
    with pytest.warns(IsolatedAtomWarning):
        g = graph.graph(s)
    assert 2 not in g.dst and g.n_nodes == 3


def test_overlapping_atoms_raise_a_crystext_error():
    s = Structure(Lattice.cubic(4.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.52, 0.5, 0.5]])
    ace = ACE(cutoff=4.0, n_radial=3, max_angular=2).fit([s])
    with pytest.raises(OverlappingAtomsError, match=r"atom 1 \(Cl\) is 0.08 Å from atom 2 \(Cl\)") as err:
        ace.transform([s])
    assert isinstance(err.value, CrystextError)
    with pytest.raises(OverlappingAtomsError):
        CrystalGraph().fit([s]).batch([s])
    # batch work: the bad structure becomes a NaN row and is counted, the good one is computed
    good = random_structure(4, species=("Na", "Cl"))
    lenient = ACE(cutoff=4.0, n_radial=3, max_angular=2, on_error="nan").fit([good])
    X = lenient.transform([s, good])
    assert np.isnan(X[0]).all() and np.isfinite(X[1]).all()
    assert [k for k, _ in lenient.skipped_] == [0] and "overlapping" in lenient.skipped_[0][1]
    graph = CrystalGraph(on_error="skip").fit([good])
    assert len(graph.graphs([s, good])) == 1 and graph.skipped_[0][0] == 0


def test_unknown_element_is_a_clear_error(ace):
    kcl = Structure(Lattice.cubic(6.3), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(UnknownElementError, match="element K was not seen by ACE.fit"):
        ace.transform([kcl])


def test_neighbor_backends_agree(structures):
    pytest.importorskip("vesin")
    s = structures[2].copy()
    s.make_supercell([2, 2, 1])
    a = neighbor_list(s, 5.0, backend="vesin")
    b = neighbor_list(s, 5.0, backend="pymatgen")
    assert a.n_pairs == b.n_pairs > 0
    np.testing.assert_array_equal(a.centers, b.centers)
    np.testing.assert_allclose(np.sort(a.distances), np.sort(b.distances), atol=1e-12)


# ----------------------------------------------------------------------------- ACE with an element table
def test_ace_with_species_table(structures):
    import pandas as pd

    table = pd.DataFrame({"x": [1.0, 2.0, 0.5, 3.0], "y": [0.0, 1.0, 1.0, -1.0]}, index=["Na", "Cl", "O", "K"])
    ace = ACE(cutoff=4.5, n_radial=3, max_angular=3, species_table=table).fit(structures)
    assert ace.channels_ == ["x", "y"] and ace.center_channels_ == ["all", "x", "y"]
    s = structures[0]
    ref = ace.transform([s])
    np.testing.assert_allclose(ace.transform([rotated(s, random_rotation(3))]), ref, atol=1e-10 * np.abs(ref).max())
    kcl = Structure(Lattice.cubic(3.8), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert np.isfinite(ace.transform([kcl])).all()  # any element of the table works


# ----------------------------------------------------------------------------- crystal graphs
def test_graph_readout_and_encoder_invariances(structures):
    s = structures[0]
    graph = CrystalGraph(cutoff=4.5).fit(structures)
    torch.manual_seed(0)
    enc = graph.encoder(hidden=16, n_layers=2, out_dim=8).double()
    sc = s.copy()
    sc.make_supercell([[1, 1, 0], [0, 1, 0], [0, 0, 2]])
    perm = np.random.default_rng(1).permutation(len(s))
    variants = [
        rotated(s, random_rotation(5, proper=False)),
        Structure(s.lattice, [s.species[i] for i in perm], s.frac_coords[perm] + 0.37),
        sc,
    ]
    ref_x = graph.transform([s])
    ref_y = enc(graph.batch([s], dtype=torch.float64)).detach()
    batch = graph.batch(variants, dtype=torch.float64)
    out = enc(batch).detach()
    torch.testing.assert_close(enc(batch.index_select([2, 0])).detach(), out[[2, 0]], atol=1e-12, rtol=0)
    for k, v in enumerate(variants):
        np.testing.assert_allclose(graph.transform([v]), ref_x, atol=1e-9, err_msg=str(k))
        torch.testing.assert_close(out[k : k + 1], ref_y, atol=1e-9, rtol=0)
    assert len(graph.feature_labels()) == ref_x.shape[1] == 103 + 40


def test_graph_encoder_is_smooth_at_the_cutoff():
    rc = 4.0
    lat = Lattice.cubic(30.0)
    trio = lambda d: Structure(lat, ["Na", "Cl", "O"], [[0, 0, 0], [2.3 / 30, 0, 0], [-0.6 * d / 30, 0.8 * d / 30, 0]])  # noqa: E731
    graph = CrystalGraph(cutoff=rc).fit([trio(3.0)])
    torch.manual_seed(0)
    enc = graph.encoder(hidden=16, n_layers=2, out_dim=4).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IsolatedAtomWarning)
        y = {d: enc(graph.batch([trio(d)], dtype=torch.float64)).detach() for d in (rc - 0.5, rc - 1e-4, rc + 1e-4)}
    assert (y[rc - 0.5] - y[rc + 1e-4]).abs().max() > 1e-4
    assert (y[rc - 1e-4] - y[rc + 1e-4]).abs().max() < 1e-6


def test_graph_element_tables_and_neighbor_cap(structures):
    import pandas as pd

    table = pd.DataFrame({"en": [0.93, 3.16, 3.44], "r": [1.8, 1.0, 0.6]}, index=["Na", "Cl", "O"])
    graph = CrystalGraph(cutoff=5.0, element_table=table).fit(structures)
    b = graph.batch(structures[:2])
    assert b.x.shape == (10, 2) and b.n_graphs == 2
    np.testing.assert_allclose(b.x.mean(0).numpy(), graph.transform(structures[:2])[:, :2].mean(0), atol=1e-6)
    with pytest.raises(UnknownElementError, match="K"):
        CrystalGraph(element_table=table).fit([Structure(Lattice.cubic(6.3), ["K", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])])
    magpie = CrystalGraph(element_table="magpie").fit(structures)  # an ElementEmbeddings set by name
    assert magpie.node_dim_ == 22 and np.isfinite(magpie.transform(structures[:1])).all()
    with pytest.raises(CrystextError, match="no-such-table"):  # ConfigError or DataNotFoundError
        CrystalGraph(element_table="no-such-table").fit(structures)
    capped = CrystalGraph(cutoff=5.0, max_neighbors=4).fit(structures).graph(structures[0])
    assert np.bincount(capped.dst).max() == 4


def test_graph_encoder_learns(structures):
    """A few steps of Adam fit three targets: the message passing is trainable end to end."""
    graph = CrystalGraph(cutoff=4.5).fit(structures)
    batch = graph.batch(structures)
    torch.manual_seed(0)
    enc = graph.encoder(hidden=16, n_layers=2, out_dim=1)
    target = torch.tensor([[1.0], [-1.0], [0.5]])
    opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        loss = torch.nn.functional.mse_loss(enc(batch), target)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first


# ----------------------------------------------------------------------------- CHGNet
def test_chgnet_branch(structures):
    pytest.importorskip("chgnet")
    from crystext.descriptors import CHGNetFeaturizer

    feat = CHGNetFeaturizer(on_error="nan").fit()
    X = feat.transform(structures[:2])
    assert X.shape == (2, 64) and np.isfinite(X).all() and len(feat.feature_labels()) == 64
    rot = feat.transform([rotated(structures[0], random_rotation(2))])
    np.testing.assert_allclose(rot[0], X[0], atol=1e-4)
    assert [a.shape for a in feat.transform_atoms(structures[:1])] == [(5, 64)]
    lonely = Structure(Lattice.cubic(20.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    out = feat.transform([lonely, structures[0]])
    assert np.isnan(out[0]).all() and np.isfinite(out[1]).all() and feat.skipped_[0][0] == 0


# ----------------------------------------------------------------------------- defaults on many elements (issue 14)
def many_element_set():
    """Ten rock-salt-like binaries over ten elements."""
    pairs = [("Li", "F"), ("Na", "Cl"), ("K", "Br"), ("Mg", "O"), ("Ca", "S"), ("Li", "Cl"), ("Na", "F"), ("Mg", "S"), ("K", "F"), ("Ca", "O")]
    return [Structure(Lattice.cubic(4.2 + 0.1 * k), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]]) for k, (a, b) in enumerate(pairs)]


def test_ace_defaults_work_on_a_ten_element_set():
    structures = many_element_set()
    ace = ACE().fit(structures)
    assert len(ace.species_) == 10
    X = ace.transform(structures)
    assert X.shape == (10, ace.n_features_) and np.all(np.isfinite(X)) and ace.n_features_ < 500_000
    # the channels do not grow with the number of elements
    assert len(ace.channels_) <= 4
    # still rotation invariant and element-sensitive
    np.testing.assert_allclose(ace.transform([rotated(structures[1], random_rotation(3))]), X[1:2], atol=1e-9 * np.abs(X).max())
    assert not np.allclose(X[1], X[6])  # NaCl vs NaF at different a: differ


def test_graph_defaults_work_on_a_ten_element_set():
    structures = many_element_set()
    graph = CrystalGraph().fit(structures)
    X = graph.transform(structures)
    assert np.all(np.isfinite(X)) and X.shape[0] == 10
    enc = graph.encoder(hidden=8, n_layers=1, out_dim=4)
    assert enc(graph.batch(structures)).shape == (10, 4)
