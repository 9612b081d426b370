"""The auxiliary geometry objective: its targets (known values, invariances, errors) and a run
trained with it (the saved model stays a plain GPT-2; a resume must keep its weight)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure
from safetensors.torch import load_file

from crystext.auxiliary import AuxObjective, document_targets
from crystext.descriptors.geometry import TARGET_NAMES, atomic_radius, structure_targets
from crystext.errors import ConfigError
from crystext.modeling import load_preset
from crystext.training import pretrain

pytestmark = pytest.mark.usefixtures("one_thread")

NACL = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
BCC_FE = Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_targets_have_their_known_values():
    t = dict(zip(TARGET_NAMES, structure_targets(NACL)))
    assert t["log_volume_per_atom"] == pytest.approx(np.log(5.69**3 / 8))
    assert t["nearest_over_radii"] == pytest.approx(5.69 / 2 / (atomic_radius("Na") + atomic_radius("Cl")))
    assert t["nearest_spread"] == pytest.approx(0.0, abs=1e-12)  # one environment
    fe = dict(zip(TARGET_NAMES, structure_targets(BCC_FE)))
    assert fe["nearest_over_radii"] == pytest.approx(2.87 * np.sqrt(3) / 2 / (2 * atomic_radius("Fe")))
    assert fe["packing_fraction"] == pytest.approx(2 * 4 / 3 * np.pi * atomic_radius("Fe") ** 3 / 2.87**3)


def test_targets_do_not_depend_on_the_cell_chosen():
    supercell = NACL.copy()
    supercell.make_supercell([2, 1, 1])
    np.testing.assert_allclose(structure_targets(supercell), structure_targets(NACL), atol=1e-10)
    np.testing.assert_allclose(structure_targets(NACL.get_primitive_structure()), structure_targets(NACL), atol=1e-10)


def test_an_empty_structure_is_refused_by_name():
    with pytest.raises(ValueError, match="no sites"):
        structure_targets(Structure(Lattice.cubic(3.0), [], []))


def test_the_loss_ignores_unreadable_documents_and_standardises_the_rest():
    import torch

    targets = np.array([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0], [np.nan] * 4])
    aux = AuxObjective(targets, weight=0.5)
    assert aux.readable == 2
    np.testing.assert_allclose(aux.z[:2].mean(axis=0), 0.0, atol=1e-6)
    head = AuxObjective.head(8)
    hidden, mask = torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.long)
    assert float(aux.loss(head, hidden, mask, np.array([2])).detach()) == 0.0  # only an unreadable document
    both = aux.loss(head, hidden, mask, np.array([0, 1, 2]))
    assert torch.isfinite(both) and both.requires_grad and float(both) > 0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """30 AFLOW prototypes and 3 header-only documents (whose targets are unreadable)."""
    from crystext.corpus import build_corpus

    root = tmp_path_factory.mktemp("aux-corpus")
    table = root / "headers.csv"
    pd.DataFrame([("NaCl", 225), ("TiO2", 136), ("GaAs", 216)], columns=["composition", "spg_num"]).to_csv(table, index=False)
    build_corpus(["aflow-prototypes", str(table)], out=root / "corpus", limit=30, split=(0.7, 0.15, 0.15), progress=False)
    return root / "corpus"


def _tiny(**training) -> dict:
    preset = load_preset("tiny")
    preset["model"]["dropout"] = 0.0
    preset["training"].update({"mixed_precision": "no", **training})
    return preset


def test_document_targets_are_measured_once_and_cached(corpus, tmp_path):
    from crystext.training import resolve_corpus

    dd, tok, _ = resolve_corpus(corpus)
    first = document_targets(dd["train"], tok, tmp_path)
    kinds = np.asarray(dd["train"]["kind"])
    assert np.isfinite(first[kinds == "structure"]).all() and np.isnan(first[kinds != "structure"]).all()
    (cached,) = (tmp_path / "aux-targets").iterdir()
    np.testing.assert_array_equal(document_targets(dd["train"], tok, tmp_path), first)
    assert cached.is_file()


def test_a_run_with_the_objective_saves_a_plain_gpt2_and_resumes_only_with_it(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("CRYSTEXT_CACHE", str(tmp_path / "cache"))
    plain = pretrain(_tiny(max_steps=3), corpus, tmp_path / "plain", progress=False)
    aux = pretrain(_tiny(max_steps=4, aux_weight=1.0), corpus, tmp_path / "aux", stop_at=2, progress=False)
    log = pd.read_csv(aux / "log.csv")
    assert log.aux_loss.notna().all() and (log.aux_loss > 0).all()
    assert pd.read_csv(plain / "log.csv").aux_loss.isna().all()
    assert set(load_file(aux / "model.safetensors")) == set(load_file(plain / "model.safetensors"))
    with pytest.raises(ConfigError, match="aux_weight 1.0"):
        pretrain(_tiny(max_steps=4, aux_weight=0.0), corpus, tmp_path / "aux", progress=False)
    aux = pretrain(_tiny(max_steps=4, aux_weight=1.0), corpus, tmp_path / "aux", progress=False)
    assert pd.read_csv(aux / "log.csv").step.max() == 4
