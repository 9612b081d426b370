"""Element and structure vectors: ElementEmbeddings round trip, batching, layers, invariances,
bad inputs, and the ``crystext embed`` / ``crystext elements`` commands."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Lattice, Structure

from crystext.builtin import aflow_prototypes
from crystext.embeddings import (
    StructureEmbedder,
    element_embeddings,
    embed_to_parquet,
    iter_structure_embeddings,
    load_run,
    read_vectors,
    save_element_csv,
    structure_embeddings,
    text_embeddings,
)
from crystext.errors import (
    CIFParseError,
    ConfigError,
    DataNotFoundError,
    DisorderError,
    EmptyStructureError,
    TokenizerError,
)
from crystext.settings import data_dir
from crystext.text import structure_to_text


def make_tiny_run(path, n_positions: int | None = None):
    """An untrained tiny run folder (real tokenizer + 'tiny' preset), saved like a training run."""
    from crystext.modeling import build_model
    from crystext.tokenization import load_tokenizer

    tok = load_tokenizer("crystext-cif")
    model = build_model("tiny", tok, seed=0)
    if n_positions is not None:  # a short context, to hit the too-long error
        from transformers import GPT2LMHeadModel

        model.config.n_positions = n_positions
        model = GPT2LMHeadModel(model.config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("runs") / "tiny-emb")


@pytest.fixture(scope="module")
def run(run_dir):
    return load_run(run_dir, device="cpu")


@pytest.fixture(scope="module")
def protos():
    return {pid: s for pid, s, _ in aflow_prototypes() if s.is_ordered}


def rocksalt() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


# --------------------------------------------------------------------------- element vectors


def test_element_embeddings_are_the_input_embedding_rows(run):
    from crystext.tokenization import element_token_ids

    model, tok = run
    df = element_embeddings(run)
    ids = element_token_ids(tok)
    d = model.config.n_embd
    assert df.shape == (len(ids), d) and list(df.columns) == list(range(d))
    assert list(df.index[:4]) == ["H", "He", "Li", "Be"]  # Z order
    weight = model.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_array_equal(df.loc["Fe"].to_numpy(), weight[ids["Fe"]])


def test_element_csv_loads_in_elementembeddings(run, tmp_path):
    from elementembeddings.core import Embedding

    df = element_embeddings(run)
    path = save_element_csv(df, tmp_path / "crystext.csv")
    assert path.read_text().splitlines()[0].startswith("element,0,1,2,")
    emb = Embedding.from_csv(str(path), "crystext-tiny")
    assert emb.dim == df.shape[1] and "Fe" in emb.element_list
    a, b = df.loc["Fe"].to_numpy(), df.loc["Co"].to_numpy()
    cosine = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert emb.compute_correlation_metric("Fe", "Co", metric="pearson") == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-6)
    assert emb.compute_distance_metric("Fe", "Co", metric="euclidean") == pytest.approx(
        np.linalg.norm(a - b), rel=1e-6)
    assert emb.compute_correlation_metric("Fe", "Co", metric="cosine_similarity") == pytest.approx(cosine, abs=1e-6)


def test_elements_cli_writes_the_same_csv(run_dir, run, tmp_path):
    from crystext.cli import main

    assert main(["elements", str(run_dir), "--out", str(tmp_path / "el.csv")]) == 0
    back = pd.read_csv(tmp_path / "el.csv", index_col="element")
    np.testing.assert_allclose(back.to_numpy(), element_embeddings(run).to_numpy(), rtol=1e-6)


# --------------------------------------------------------------------------- structure vectors


@pytest.fixture(scope="module")
def mixed(protos):
    """Structures with very different text lengths (padding matters in a batch)."""
    picks = ["aflow:A_cF4_225_a", "pymatgen:LiFePO4", "aflow:AB_oC8_63_c_c", "aflow:A2B_tP6_136_f_a"]
    return [protos[p] for p in picks] + [rocksalt()] + list(protos.values())[:3]


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("layer", [0, 1, -1])
def test_batched_equals_one_at_a_time(run, mixed, layer, pooling):
    batched = structure_embeddings(mixed, run, layer=layer, pooling=pooling, batch_size=5)
    single = np.stack([structure_embeddings([s], run, layer=layer, pooling=pooling, batch_size=1)[0] for s in mixed])
    assert batched.shape == (len(mixed), run[0].config.n_embd) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)
    assert np.abs(batched[0] - batched[1]).max() > 1e-3  # different structures, different vectors


def test_left_padding_gives_the_same_vectors(run, mixed):
    """Positions come from the attention mask, so the pooling does not depend on the padding side
    (the pipeline pads on the tokenizer's side)."""
    from crystext.embeddings import pool_hidden_states, special_token_ids

    model, tok = run
    ids = [tok(structure_to_text(s))["input_ids"] for s in mixed[:4]]
    width = max(map(len, ids))
    x = torch.full((len(ids), width), tok.pad_token_id)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        x[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    for pooling in ("mean", "last"):
        with torch.no_grad():
            left = pool_hidden_states(model, x, mask, special_token_ids(tok), layer=-1, pooling=pooling).numpy()
        np.testing.assert_allclose(left, structure_embeddings(mixed[:4], run, pooling=pooling, batch_size=1),
                                   atol=1e-5)


def test_layer_zero_mean_is_the_mean_input_embedding_of_the_text_tokens(run):
    model, tok = run
    s = rocksalt()
    ids = tok(structure_to_text(s))["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    emb = model.transformer.wte.weight[ids] + model.transformer.wpe.weight[: len(ids)]
    expected = emb[1:-1].mean(0).detach().numpy()  # <bos> and <eos> excluded
    np.testing.assert_allclose(structure_embeddings([s], run, layer=0)[0], expected, atol=1e-6)


def test_last_pooling_is_the_eos_state(run):
    model, tok = run
    s = rocksalt()
    ids = torch.tensor([tok(structure_to_text(s))["input_ids"]])
    with torch.no_grad():
        hidden = model.transformer(ids).last_hidden_state[0, -1].numpy()
    np.testing.assert_allclose(structure_embeddings([s], run, pooling="last")[0], hidden, atol=1e-5)


def test_default_layer_is_last_and_layers_differ(run, mixed):
    last = structure_embeddings(mixed[:3], run)
    np.testing.assert_array_equal(last, structure_embeddings(mixed[:3], run, layer=run[0].config.n_layer))
    assert np.abs(last - structure_embeddings(mixed[:3], run, layer=1)).max() > 1e-3


def test_several_views_from_one_pass_equal_separate_passes(run, mixed):
    views = [(1, "mean"), (-1, "last"), (0, "mean")]
    joint = StructureEmbedder(run, views=views, batch_size=3).embed(mixed)
    d = run[0].config.n_embd
    assert joint.shape == (len(mixed), d * len(views))
    for j, (layer, pooling) in enumerate(views):
        alone = structure_embeddings(mixed, run, layer=layer, pooling=pooling, batch_size=3)
        np.testing.assert_allclose(joint[:, j * d:(j + 1) * d], alone, atol=1e-6, rtol=0)


def test_bf16_autocast_vectors_are_float32_and_close_to_float32_ones(run, mixed):
    full = StructureEmbedder(run, views=[(-1, "mean"), (1, "mean")]).embed(mixed)
    half = StructureEmbedder(run, views=[(-1, "mean"), (1, "mean")], autocast="bfloat16").embed(mixed)
    assert half.dtype == np.float32 and half.shape == full.shape
    cos = (full * half).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(half, axis=1)
    assert cos.min() > 0.999
    assert not np.array_equal(full, half)  # the forward pass really ran in bf16
    with pytest.raises(ConfigError, match="autocast"):
        StructureEmbedder(run, autocast="int8")


def test_iterator_and_text_input_match_the_array(run, mixed):
    array = structure_embeddings(mixed, run, batch_size=4)
    streamed = np.stack(list(iter_structure_embeddings(iter(mixed), run, batch_size=4)))
    np.testing.assert_array_equal(array, streamed)
    texts = text_embeddings([structure_to_text(s) for s in mixed], run, batch_size=3)
    np.testing.assert_allclose(array, texts, atol=1e-5)


def test_model_is_in_eval_mode(run_dir, mixed):
    model, tok = load_run(run_dir)
    assert not model.training
    model.train()  # dropout on: the embedder must switch it off again
    a = structure_embeddings(mixed[:2], (model, tok))
    b = structure_embeddings(mixed[:2], (model, tok))
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- invariances

R = np.array([[0.36, 0.48, -0.8], [-0.8, 0.6, 0.0], [0.48, 0.64, 0.6]])  # a proper rotation


def rotated(s: Structure) -> Structure:
    return Structure(Lattice(s.lattice.matrix @ R.T), s.species, s.frac_coords)


def translated(s: Structure) -> Structure:
    return Structure(s.lattice, s.species, s.frac_coords + np.array([0.1, 0.2, 0.3]))


def permuted(s: Structure) -> Structure:
    order = list(reversed(range(len(s))))
    return Structure(s.lattice, [s.species[i] for i in order], s.frac_coords[order])


def supercell_primitive(s: Structure) -> Structure:
    big = s.copy()
    big.make_supercell([[1, 1, 0], [0, 1, 1], [1, 0, 1]])
    return big.get_primitive_structure()


def supercell_221(s: Structure) -> Structure:
    big = s.copy()
    big.make_supercell([2, 2, 1])
    return big


TRANSFORMS = {f.__name__: f for f in (rotated, translated, permuted, supercell_primitive, supercell_221)}

def _structure(name: str, protos) -> Structure:
    if name == "rocksalt":
        return rocksalt()
    if name == "LiFePO4":
        return protos["pymatgen:LiFePO4"]
    folder = data_dir() / "perov_5"
    if not (folder / "val.csv").is_file():
        pytest.skip("shared data not found: set CRYSTEXT_DATA to the folder holding perov_5/")
    from crystext.inputs import to_structure

    df = pd.read_csv(folder / "val.csv", nrows=50)
    return to_structure(df.loc[df.material_id == int(name.split(":")[1]), "cif"].iloc[0])


@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("name", ["rocksalt", "perov_5:18517", "LiFePO4"])
def test_symmetry_equivalent_copies_embed_the_same(run, protos, name, transform):
    s = _structure(name, protos)
    copy = TRANSFORMS[transform](s)
    assert len(copy) != len(s) or not np.allclose(copy.lattice.matrix, s.lattice.matrix) or not np.allclose(
        copy.frac_coords, s.frac_coords)  # really a different description
    a, b = structure_embeddings([s, copy], run, batch_size=2)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_crystext_errors(run, tmp_path):
    disordered = rocksalt()
    disordered.replace_species({"Na": {"Na": 0.5, "K": 0.5}})
    with pytest.raises(CIFParseError, match="input 1: unparsable CIF"):
        structure_embeddings([rocksalt(), "data_x\nloop_\n_foo 1\n_cell_length_a 3\n"], run)
    with pytest.raises(DisorderError, match="partially occupied"):
        structure_embeddings([disordered], run)
    with pytest.raises(EmptyStructureError):
        structure_embeddings([Structure(Lattice.cubic(3), [], [])], run)
    with pytest.raises(ConfigError, match="layer 7 out of range"):
        structure_embeddings([rocksalt()], run, layer=7)
    with pytest.raises(ConfigError, match="pooling"):
        structure_embeddings([rocksalt()], run, pooling="max")
    with pytest.raises(DataNotFoundError, match="no such folder"):
        load_run(tmp_path / "missing-run")


def test_text_longer_than_the_context_is_refused(tmp_path, protos):
    short = make_tiny_run(tmp_path / "short", n_positions=64)
    with pytest.raises(TokenizerError, match="longer than the model's context of 64"):
        structure_embeddings([protos["pymatgen:LiFePO4"]], str(short))


def test_unknown_token_is_refused(run):
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        StructureEmbedder(run).embed(["data_X\n\u00a7\u00a7\u00a7\n"], texts=True)


# --------------------------------------------------------------------------- embed command


@pytest.fixture(scope="module")
def embed_inputs(tmp_path_factory, protos):
    """A CIF folder (one non-UTF-8 file, one junk file), a CSV and a Parquet table (bad rows), a saved corpus."""
    import datasets

    root = tmp_path_factory.mktemp("embed-inputs")
    good = [rocksalt(), protos["aflow:A_cF4_225_a"], protos["aflow:A2B_tP6_136_f_a"], protos["pymatgen:LiFePO4"]]
    folder = root / "cifs"
    folder.mkdir()
    for i, s in enumerate(good):
        (folder / f"s{i}.cif").write_text(s.to(fmt="cif"))
    (folder / "bad-bytes.cif").write_bytes(b"data_x\n\xff\xfe\n")
    (folder / "junk.cif").write_text("garbage")
    rows = [{"material_id": f"m{i}", "cif": s.to(fmt="cif")} for i, s in enumerate(good)]
    rows.insert(1, {"material_id": "bad-cif", "cif": "data_broken\n_cell_length_a x\n"})
    rows.insert(3, {"material_id": "empty", "cif": None})
    pd.DataFrame(rows).to_csv(root / "table.csv", index=False)
    pd.DataFrame(rows).to_parquet(root / "table.parquet")
    texts = [structure_to_text(s) for s in good]
    corpus = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"id": ["c0", "c1", "c2"], "text": texts[:3]}),
        "test": datasets.Dataset.from_dict({"id": ["c3"], "text": texts[3:]}),
    })
    corpus.save_to_disk(str(root / "corpus"))
    return root, good


def test_embed_cli_streams_skips_and_counts(run_dir, run, embed_inputs, tmp_path, capsys):
    from crystext.cli import main

    root, good = embed_inputs
    out = tmp_path / "vectors.parquet"
    code = main(["embed", str(root / "cifs"), str(root / "table.csv"), str(root / "table.parquet"),
                 str(root / "corpus"), "--model", str(run_dir), "--out", str(out), "--batch-size", "3",
                 "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "embedded 16 structures" in printed and "skipped 6" in printed
    assert "CIFParseError 5" in printed and "EncodingError 1" in printed
    ids, vectors = read_vectors(out)
    expected = structure_embeddings([s.to(fmt="cif") for s in good], run)  # the very CIFs written
    assert ids[:4] == ["s0", "s1", "s2", "s3"] and ids[4:8] == ["m0", "m1", "m2", "m3"]
    assert ids[12:] == ["c0", "c1", "c2", "c3"]
    for block in range(3):
        np.testing.assert_allclose(vectors[4 * block : 4 * block + 4], expected, atol=1e-5)
    np.testing.assert_allclose(vectors[12:], structure_embeddings(good, run), atol=1e-5)  # corpus texts


def test_embed_small_row_groups_and_layer_choice(run, embed_inputs, tmp_path):
    root, good = embed_inputs
    summary = embed_to_parquet([root / "table.csv"], run, tmp_path / "v.parquet", layer=0, pooling="last",
                               batch_size=2, rows_per_group=1, progress=False)
    assert summary["embedded"] == 4 and summary["skipped"] == 2 and summary["layer"] == 0
    import pyarrow.parquet as pq

    assert pq.ParquetFile(tmp_path / "v.parquet").metadata.num_row_groups == 4
    np.testing.assert_allclose(read_vectors(tmp_path / "v.parquet")[1],
                               structure_embeddings([s.to(fmt="cif") for s in good], run, layer=0, pooling="last"),
                               atol=1e-5)


def test_embed_cli_refuses_unreadable_inputs(run_dir, tmp_path, capsys):
    from crystext.cli import main

    table = tmp_path / "no-cif.csv"
    pd.DataFrame({"formula": ["NaCl"]}).to_csv(table, index=False)
    assert main(["embed", str(table), "--model", str(run_dir), "--out", str(tmp_path / "o.parquet")]) == 2
    assert "no 'cif' column" in capsys.readouterr().err
    assert main(["embed", str(tmp_path / "nowhere"), "--model", str(run_dir), "--out", str(tmp_path / "o.pq")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


# --------------------------------------------------------------------------- pictures


def test_plot_elements_writes_readable_pngs(run, tmp_path):
    from PIL import Image

    from crystext.plots import periodic_order, plot_elements

    assert periodic_order(["O", "Na", "Fe", "He"], "z") == ["He", "O", "Na", "Fe"]
    assert periodic_order(["O", "Na", "Fe", "He"], "mendeleev") == ["He", "Na", "Fe", "O"]
    paths = plot_elements(run, tmp_path, compare=["magpie"], methods=["pca"], name="tiny")
    assert [p.name for p in paths] == ["elements_pca.png", "elements_cosine.png"]
    for p in paths:
        with Image.open(p) as img:
            assert img.size[0] > 1000 and img.size[1] > 800


def test_unseen_elements_are_flagged(tmp_path, recwarn):
    import json

    run_dir = make_tiny_run(tmp_path / "with-summary")
    (run_dir / "corpus_summary.json").write_text(json.dumps({"element_counts": {"Na": 3, "Cl": 3, "O": 1}}))
    with pytest.warns(UserWarning, match=r"untrained \(fewer than 20 pretraining documents; never seen: 115\): H, He"):
        df = element_embeddings(str(run_dir))
    assert df.attrs["seen"]["Na"] and df.attrs["seen"]["O"] and not df.attrs["seen"]["Fe"]
    assert "Fe" in df.attrs["unseen"] and "Na" not in df.attrs["unseen"]
    assert len(df.attrs["unseen"]) == len(df) - 3
    assert "Na" in df.attrs["untrained"] and len(df.attrs["untrained"]) == len(df)  # 3 documents < 20
    no_summary = make_tiny_run(tmp_path / "bare")
    assert "unseen" not in element_embeddings(str(no_summary)).attrs  # unknown: nothing claimed


def test_embed_progress_total_counts_csv_records(embed_inputs):
    from crystext.embeddings import describe_input

    root, good = embed_inputs
    assert describe_input(root / "table.csv").count == 6  # multi-line CIF cells: records, not lines
    assert describe_input(root / "table.parquet").count == 6


def test_embed_precision_auto_goes_through_crystext_precision(run_dir, embed_inputs, tmp_path, monkeypatch):
    import crystext.precision as precision

    root, good = embed_inputs
    monkeypatch.setattr(precision, "bf16_speed", lambda device_type="cpu": {"fast": False, "reason": "test"})
    summary = embed_to_parquet([root / "table.csv"], str(run_dir), tmp_path / "a.parquet", precision="auto",
                               progress=False)
    assert summary["precision"] == "float32"
    bf16 = embed_to_parquet([root / "table.csv"], str(run_dir), tmp_path / "b.parquet", precision="bf16",
                            progress=False)
    assert bf16["precision"] == "bfloat16"
    a, b = read_vectors(tmp_path / "a.parquet")[1], read_vectors(tmp_path / "b.parquet")[1]
    assert not np.array_equal(a, b) and np.allclose(a, b, atol=0.1)
