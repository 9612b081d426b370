"""The ``crystal-embedding`` pipeline task: every input type, batching, parameters, Hub folders, bad inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import pytest
import transformers
from pymatgen.core import Lattice, Structure

from crystext.builtin import aflow_prototypes
from crystext.embeddings import structure_embeddings
from crystext.errors import CIFParseError, ConfigError, CrystextError, DisorderError, EncodingError
from crystext.pipeline import TASK, CrystalEmbeddingPipeline, register_pipeline

register_pipeline()  # ``import crystext`` does this; explicit here so the test says what it relies on


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from crystext.modeling import build_model
    from crystext.tokenization import load_tokenizer

    tok = load_tokenizer("crystext-cif")
    model = build_model("tiny", tok, seed=1)
    path = tmp_path_factory.mktemp("runs") / "tiny-pipe"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pipe(run_dir):
    return transformers.pipeline(TASK, model=str(run_dir), device="cpu")


@pytest.fixture(scope="module")
def structures():
    protos = {pid: s for pid, s, _ in aflow_prototypes()}
    rocksalt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return [rocksalt, protos["pymatgen:LiFePO4"], protos["aflow:A_cF4_225_a"], protos["aflow:A2B_tP6_136_f_a"],
            protos["aflow:AB_oC8_63_c_c"]]


def _atoms(structure: Structure):
    import ase

    return ase.Atoms([site.specie.symbol for site in structure], positions=structure.cart_coords,
                     cell=structure.lattice.matrix, pbc=True)


def test_task_is_registered_and_builds_our_class(pipe):
    assert TASK in transformers.pipelines.PIPELINE_REGISTRY.get_supported_tasks()
    assert isinstance(pipe, CrystalEmbeddingPipeline) and not pipe.model.training
    register_pipeline()  # idempotent
    assert transformers.pipelines.PIPELINE_REGISTRY.supported_tasks[TASK]["impl"] is CrystalEmbeddingPipeline


def test_every_input_type_gives_the_same_vector(pipe, run_dir, structures, tmp_path):
    s = structures[0]
    cif = s.to(fmt="cif")
    path = tmp_path / "nacl.cif"
    path.write_text(cif)
    reference = structure_embeddings([s], str(run_dir))[0]
    for item in (s, _atoms(s), cif, str(path), path, cif.encode()):
        vec = pipe(item)
        assert isinstance(vec, np.ndarray) and vec.shape == (pipe.model.config.n_embd,) and vec.dtype == np.float32
        np.testing.assert_allclose(vec, reference, atol=1e-5, err_msg=type(item).__name__)
    listed = pipe([s, _atoms(s), cif, str(path), path], batch_size=2)
    assert isinstance(listed, list) and len(listed) == 5
    for vec in listed:
        np.testing.assert_allclose(vec, reference, atol=1e-5)


def test_batch_equals_single_and_matches_the_library(pipe, run_dir, structures):
    single = np.stack([pipe(s) for s in structures])
    for batch_size in (2, 5):
        np.testing.assert_allclose(np.stack(pipe(structures, batch_size=batch_size)), single, atol=1e-5)
    np.testing.assert_allclose(single, structure_embeddings(structures, str(run_dir)), atol=1e-5)
    assert np.abs(single[0] - single[1]).max() > 1e-3


def test_layer_and_pooling_parameters(pipe, run_dir, structures):
    got = np.stack(pipe(structures, batch_size=3, layer=1, pooling="last"))
    np.testing.assert_allclose(got, structure_embeddings(structures, str(run_dir), layer=1, pooling="last"), atol=1e-5)
    at_init = transformers.pipeline(TASK, model=str(run_dir), device="cpu", layer=0)
    np.testing.assert_allclose(at_init(structures[1]), structure_embeddings(structures[1:2], str(run_dir), layer=0)[0],
                               atol=1e-6)
    with pytest.raises(ConfigError, match="out of range"):
        pipe(structures[0], layer=9)
    with pytest.raises(ConfigError, match="pooling"):
        pipe(structures[0], pooling="max")
    with pytest.raises(TypeError, match="unexpected parameters"):
        pipe(structures[0], top_k=3)


def test_generator_input_streams(pipe, structures):
    out = pipe((s for s in structures), batch_size=2)
    assert not isinstance(out, list)
    np.testing.assert_allclose(np.stack(list(out)), np.stack([pipe(s) for s in structures]), atol=1e-5)


def test_bad_inputs_raise_crystext_errors(pipe, tmp_path):
    bad_bytes = tmp_path / "bad.cif"
    bad_bytes.write_bytes(b"data_x\n\xff\n")
    disordered = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    disordered.replace_species({"Na": {"Na": 0.5, "K": 0.5}})
    with pytest.raises(CIFParseError, match="CIF text: unparsable CIF"):
        pipe("data_x\n_cell_length_a 3\n_cell_length_b q\n")
    with pytest.raises(EncodingError, match="bad.cif: not UTF-8"):
        pipe(bad_bytes)
    with pytest.raises(DisorderError):
        pipe(disordered)
    with pytest.raises(CrystextError):
        pipe([Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
              "data_x\n_cell_length_a 3\n_cell_length_b q\n"], batch_size=2)
    with pytest.raises(TypeError, match="cannot make a Structure from int"):
        pipe(42)


def test_works_on_a_folder_exported_for_the_hub(run_dir, structures, tmp_path, monkeypatch):
    """The Hub export (config, safetensors, tokenizer, card) loads by path and, from the Hub cache,
    by repo id (offline: no network is touched)."""
    import huggingface_hub.constants

    from crystext.hub import export_for_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    export = export_for_hub(run_dir, tmp_path / "export", "someone/crystext-tiny", verify=False)
    assert not list(Path(export).glob("*.py"))  # no remote code travels
    reference = structure_embeddings(structures[:2], str(run_dir))

    by_path = transformers.pipeline(TASK, model=str(export), device="cpu")
    np.testing.assert_allclose(np.stack(by_path(structures[:2], batch_size=2)), reference, atol=1e-5)

    cache = tmp_path / "hub-cache"
    repo = cache / "models--someone--crystext-tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(export, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    by_id = transformers.pipeline(TASK, model="someone/crystext-tiny", device="cpu",
                                  model_kwargs={"cache_dir": str(cache)})
    np.testing.assert_allclose(np.stack(by_id(structures[:2], batch_size=2)), reference, atol=1e-5)


BAD_CIF = "data_x\n_cell_length_a 3\n_cell_length_b q\n"


def test_errors_skip_keeps_the_good_vectors_and_names_the_bad_index(pipe, run_dir, structures):
    good = structures[:3]
    reference = structure_embeddings(good, str(run_dir))
    with pytest.warns(UserWarning) as caught:
        out = pipe([good[0], BAD_CIF, good[1], 42, good[2]], batch_size=2, errors="skip")
    assert out[1] is None and out[3] is None
    np.testing.assert_allclose(np.stack([out[0], out[2], out[4]]), reference, atol=1e-5)
    messages = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert any("input 1" in m and "unparsable CIF" in m for m in messages)
    assert any("input 3" in m and "cannot make a Structure from int" in m for m in messages)
    with pytest.warns(UserWarning, match="skipped"):
        assert pipe(BAD_CIF, errors="skip") is None
    with pytest.raises(ConfigError, match="errors must be one of"):
        pipe(good[0], errors="ignore")


def test_raise_names_the_list_index(pipe, structures, tmp_path):
    with pytest.raises(CIFParseError, match=r"input 1 \(CIF text\): unparsable CIF"):
        pipe([structures[0], BAD_CIF], batch_size=2)
    bad_bytes = tmp_path / "bad.cif"
    bad_bytes.write_bytes(b"data_x\n\xff\n")
    with pytest.raises(EncodingError, match=r"input 2 .*bad.cif.*not UTF-8"):
        pipe([structures[0], structures[1], bad_bytes])


def test_float16_release_runs_in_float32_and_matches_the_library(structures):
    from crystext.settings import REPO_ROOT

    compact = REPO_ROOT / "models" / "crystext-compact"
    if not (compact / "model.safetensors").is_file():
        pytest.skip("models/crystext-compact not in this checkout")
    import json

    from safetensors import safe_open

    with safe_open(str(compact / "model.safetensors"), framework="pt") as fh:  # stored in half precision
        assert fh.get_tensor(next(iter(fh.keys()))).dtype == torch.float16
    pipe16 = transformers.pipeline(TASK, model=str(compact), device="cpu")
    assert pipe16.model.dtype == torch.float32
    got = np.stack(pipe16(structures[:2], batch_size=2))
    np.testing.assert_allclose(got, structure_embeddings(structures[:2], str(compact)), atol=1e-5)
