"""Corpus building: sources, skip counting, dedupe, splits, header documents, token counts."""

from __future__ import annotations

import bz2
import csv
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from crystext.corpus import (
    build_corpus,
    header_lines,
    header_text,
    iter_table_chunks,
    iter_table_records,
    load_corpus,
    split_of,
    table_columns,
    token_counts,
)
from crystext.errors import ConfigError, DataNotFoundError
from crystext.settings import data_dir
from crystext.text import structure_to_text

warnings.filterwarnings("ignore", module="pymatgen")


def _data():
    path = data_dir()
    if not (path / "perov_5" / "val.csv").is_file():
        pytest.skip("shared data not found: set CRYSTEXT_DATA to the folder holding perov_5/, carbon_24/, matbench/")
    return path


@pytest.fixture(scope="module")
def tok():
    from crystext.tokenization import load_tokenizer

    return load_tokenizer("crystext-cif")


@pytest.fixture(scope="module")
def perov():
    return pd.read_csv(_data() / "perov_5" / "val.csv", nrows=40)


def _nacl(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _cif(species_occ: str, extra: str = "") -> str:
    return (
        "data_x\n_symmetry_space_group_name_H-M   'P 1'\n_cell_length_a 4.0\n_cell_length_b 4.0\n"
        "_cell_length_c 4.0\n_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n"
        "_symmetry_Int_Tables_number 1\nloop_\n _atom_site_type_symbol\n _atom_site_label\n"
        " _atom_site_fract_x\n _atom_site_fract_y\n _atom_site_fract_z\n _atom_site_occupancy\n"
        + species_occ
        + extra
    )


def _all(corpus):
    return pd.concat([corpus[s].to_pandas() for s in ("train", "validation", "test")], ignore_index=True)


# --------------------------------------------------------------------------- header documents

def test_header_lines_match_structure_to_text():
    """Header lines equal the corresponding lines of the full text, for every centering, both from
    the conventional composition and from a primitive cell's composition."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from crystext.builtin import aflow_prototypes

    seen_letters = set()
    for _, s, _ in aflow_prototypes()[:80]:
        text = structure_to_text(s)
        full = [ln for ln in text.split("loop_")[0].splitlines() if not ln.startswith(("_cell_length", "_cell_angle", "_cell_volume"))]
        formula_sum = next(ln for ln in full if ln.startswith("_chemical_formula_sum")).split(" ", 1)[1].strip("'")
        number = int(next(ln for ln in full if ln.startswith("_symmetry_Int_Tables_number")).split()[1])
        assert header_lines(formula_sum, number) == full
        prim = SpacegroupAnalyzer(s, symprec=0.1).find_primitive()
        if prim is not None and SpacegroupAnalyzer(prim, symprec=0.1).get_space_group_number() == number:
            assert header_lines(prim.composition, number, cell="primitive") == full, text
            seen_letters.add(full[1].split()[1][0])
    assert {"P", "F", "I", "C", "R"} <= seen_letters


def test_header_text_known_value_and_errors():
    # rock salt from its 2-atom primitive cell: the conventional cell holds 4 formula units
    assert header_text("Na1 Cl1", 225, cell="primitive") == (
        "data_Na4Cl4\n_symmetry_space_group_name_H-M Fm-3m\n_symmetry_Int_Tables_number 225\n"
        "_chemical_formula_structural NaCl\n_chemical_formula_sum 'Na4 Cl4'\n_cell_formula_units_Z 4\n"
    )
    from crystext.errors import CIFParseError, SpaceGroupError, UnknownElementError

    with pytest.raises(UnknownElementError, match="Xx"):
        header_text("Xx1 O2", 1)
    with pytest.raises(SpaceGroupError, match="231"):
        header_text("Na1 Cl1", 231)
    with pytest.raises(CIFParseError, match="whole numbers"):
        header_text("Fe0.5 O1", 1)


def test_matbench_headers_hold_no_target_and_no_sites(tok, tmp_path):
    path = _data() / "matbench" / "matbench_mp_e_form.json.bz2"
    if not path.is_file():
        pytest.skip("shared data not found: matbench/matbench_mp_e_form.json.bz2")
    corpus = build_corpus([str(path)], out=tmp_path / "c", tokenizer=tok, limit=60, progress=False, dedupe=None)
    df = _all(corpus)
    raw = pd.read_json(path, compression="bz2").head(60)
    assert len(df) == 60 and set(df.kind) == {"header"}
    by_id = raw.set_index("mbid")
    for row in df.itertuples():
        assert "loop_" not in row.text and "_atom_site" not in row.text and "_cell_length" not in row.text
        assert row.text.count("\n") == 6 and row.text.startswith("data_")
        props = json.loads(row.properties)
        assert set(props) == {"crys_sys"}  # the target column is dropped, not kept as a property
        target = by_id.loc[row.id.split(":", 1)[1], "e_form"]
        assert f"{target:.4f}" not in row.text and f"{target:.3f}" not in row.text
        assert row.spacegroup == by_id.loc[row.id.split(":", 1)[1], "spg_num"]


# --------------------------------------------------------------------------- sources

def test_every_source_type(tok, tmp_path, perov):
    folder = tmp_path / "cifs"
    folder.mkdir()
    for mid, cif in zip(perov.material_id[:5], perov.cif[:5]):
        (folder / f"{mid}.cif").write_text(cif)
    table = perov.iloc[5:15]
    table.to_csv(tmp_path / "t_csv.csv", index=False)
    perov.iloc[15:20].to_parquet(tmp_path / "t_pq.parquet")
    perov.iloc[20:25].to_json(tmp_path / "t_jl.jsonl", orient="records", lines=True)
    (tmp_path / "one.json").write_text(_nacl().to_json())
    (tmp_path / "many.json").write_text(json.dumps([{"structure": _nacl(5.0).as_dict(), "energy": -1.5}]))
    names = ["t_csv.csv", "t_pq.parquet", "t_jl.jsonl", "one.json", "many.json"]
    sources = [str(folder)] + [str(tmp_path / n) for n in names] + ["aflow-prototypes"]
    corpus = build_corpus(sources, tokenizer=tok, limit=7, dedupe=None, progress=False)
    df = _all(corpus)
    d = tmp_path.name
    assert df.groupby("source").size().to_dict() == {
        "cifs": 5, f"{d}/t_csv": 7, f"{d}/t_pq": 5, f"{d}/t_jl": 5, f"{d}/one": 1, f"{d}/many": 1, "aflow-prototypes": 7
    }
    assert set(df.kind) == {"structure"}
    # table columns other than cif and the id are properties, never text
    row = df[df.id == f"{d}/t_csv:{table.material_id.iloc[0]}"].iloc[0]
    props = json.loads(row.properties)
    assert props["heat_all"] == pytest.approx(table.heat_all.iloc[0])
    assert "heat_all" not in row.text and "Unnamed: 0" not in props
    assert json.loads(df[df.source == f"{d}/many"].properties.iloc[0]) == {"energy": -1.5}
    # text is the canonical text form and formula / space group agree with it
    s = Structure.from_str(table.cif.iloc[0], fmt="cif")
    assert row.text == structure_to_text(s)
    assert row.formula == s.composition.reduced_formula
    # ids are wrapped <bos> ... <eos> and decode back to the text
    assert row.input_ids[0] == tok.bos_token_id and row.input_ids[-1] == tok.eos_token_id
    assert tok.decode(row.input_ids, skip_special_tokens=True) == row.text
    assert row.num_tokens == len(row.input_ids)


def test_structures_given_directly(tok):
    corpus = build_corpus([_nacl(), _nacl(5.0)], tokenizer=tok, dedupe=None, progress=False)
    df = _all(corpus)
    assert sorted(df.id) == ["structures:0", "structures:1"] and set(df.formula) == {"NaCl"}
    assert set(df.spacegroup) == {225}


def test_missing_or_unreadable_source(tok, tmp_path):
    with pytest.raises(DataNotFoundError, match="no such file"):
        build_corpus([str(tmp_path / "absent")], tokenizer=tok, progress=False)
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="cif"):
        build_corpus([str(tmp_path / "x.csv")], tokenizer=tok, progress=False)
    with pytest.raises(ConfigError, match="split"):
        build_corpus(["aflow-prototypes"], tokenizer=tok, split=(0.5, 0.1, 0.1), progress=False)


# --------------------------------------------------------------------------- skip counting

def test_bad_records_are_skipped_and_counted(tok, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.cif").write_text(_cif("  Na  Na0  0 0 0 1\n  Cl  Cl0  0.5 0.5 0.5 1\n"))
    (folder / "garbage.cif").write_text("data_x\n_cell_length_a foo\nloop_\n_atom_site_label\n")
    (folder / "latin1.cif").write_bytes(_cif("  Na  Na0  0 0 0 1\n").encode().replace(b"Na0", b"Na\xe9"))
    (folder / "disordered.cif").write_text(_cif("  Na  Na0  0 0 0 0.5\n  K  K0  0 0 0 0.5\n  Cl  Cl0  0.5 0.5 0.5 1\n"))
    (folder / "unknown.cif").write_text(_cif("  Xx  Xx0  0 0 0 1\n"))
    (folder / "empty.cif").write_text(_cif(""))
    empty = {"@module": "pymatgen.core.structure", "@class": "Structure", "lattice": Lattice.cubic(3).as_dict(), "sites": []}
    (tmp_path / "structs.json").write_text(json.dumps([_nacl().as_dict(), empty]))
    (tmp_path / "rows.csv").write_text("id,cif\nr1,\nr2,not a cif\n")
    out = tmp_path / "out"
    corpus = build_corpus([str(folder), str(tmp_path / "structs.json"), str(tmp_path / "rows.csv")], out=out,
                          tokenizer=tok, dedupe=None, progress=False)
    df = _all(corpus)
    assert sorted(df.id) == ["mixed:good", f"{tmp_path.name}/structs:0"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skip_reasons"] == {
        "CIFParseError": 4,  # garbage.cif, empty.cif (no atom rows), two bad table rows
        "EncodingError": 1,
        "DisorderError": 1,
        "UnknownElementError": 1,
        "EmptyStructureError": 1,
    }
    assert summary["sources"]["mixed"] == {"kind": "structure", "records": 6, "skipped": 5, "duplicates": 0, "documents": 1}
    with open(out / "skipped.csv") as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    assert rows["mixed:latin1"]["reason"] == "EncodingError" and "0xe9" in rows["mixed:latin1"]["message"]
    assert rows["mixed:disordered"]["reason"] == "DisorderError"
    assert rows["mixed:unknown"]["reason"] == "UnknownElementError" and "Xx" in rows["mixed:unknown"]["message"]
    assert rows[f"{tmp_path.name}/structs:1"]["reason"] == "EmptyStructureError"
    # the disordered record is kept when disorder is resolved
    kept = build_corpus([str(folder)], tokenizer=tok, dedupe=None, disorder="dominant", progress=False)
    assert "mixed:disordered" in set(_all(kept).id)


# --------------------------------------------------------------------------- dedupe

def _random_si(seed: int) -> Structure:
    rng = np.random.default_rng(seed)
    return Structure(Lattice.from_parameters(4.1, 4.7, 5.3, 71, 83, 97), ["Si"] * 3, rng.random((3, 3)))


def test_dedupe_modes(tok):
    nacl, nacl_big = _nacl(5.64), _nacl(5.80)  # same structure, scaled: not the same text
    moved = _nacl(5.64)
    moved.translate_sites(list(range(len(moved))), [0.13, 0.2, 0.07])  # same text as nacl
    si1, si2 = _random_si(1), _random_si(2)  # same formula and space group (P1), different structures
    items = [nacl, nacl_big, moved, si1, si2]
    none = _all(build_corpus(items, tokenizer=tok, dedupe=None, progress=False))
    fs = _all(build_corpus(items, tokenizer=tok, dedupe="formula-spacegroup", progress=False))
    st = build_corpus(items, tokenizer=tok, dedupe="structure", progress=False)
    assert sorted(none.id) == [f"structures:{i}" for i in range(5)]
    assert sorted(fs.id) == ["structures:0", "structures:3"]  # one per (formula, space group)
    assert sorted(_all(st).id) == ["structures:0", "structures:3", "structures:4"]
    assert st.summary["sources"]["structures"]["duplicates"] == 2


def test_dedupe_prefers_structures_over_headers(tok, tmp_path):
    table = pd.DataFrame({"mbid": ["m1", "m2", "m3"], "composition": ["Na1 Cl1", "Na1 Cl1", "K1 Cl1"],
                          "spg_num": [225, 225, 225], "crys_sys": ["cubic"] * 3, "e_form": [-2.0, -2.1, -2.2]})
    path = tmp_path / "matbench_tiny.json.bz2"
    with bz2.open(path, "wt") as fh:
        fh.write(table.to_json())
    fs = _all(build_corpus([str(path), _nacl()], tokenizer=tok, dedupe="formula-spacegroup", progress=False))
    assert set(fs.id) == {f"{tmp_path.name}/matbench_tiny:m3", "structures:0"}
    st = _all(build_corpus([str(path), _nacl()], tokenizer=tok, dedupe="structure", progress=False))
    # identical header texts collapse; headers are not compared with structures
    assert set(st.id) == {f"{tmp_path.name}/matbench_tiny:m1", f"{tmp_path.name}/matbench_tiny:m3", "structures:0"}
    assert not any("-2.0" in t or "-2.1" in t for t in st.text)


# --------------------------------------------------------------------------- splits

def test_composition_split_shares_no_formula_and_seed_is_deterministic(tok):
    data = _data()
    src = [str(data / "perov_5" / "val.csv"), str(data / "carbon_24" / "val.csv")]  # 12 x "C": one group
    kw = dict(tokenizer=tok, limit=12, dedupe=None, progress=False, split=(0.6, 0.2, 0.2))
    a = build_corpus(src, split_by="composition", seed=3, **kw)
    formulas = [set(a[s]["formula"]) for s in ("train", "validation", "test")]
    assert not (formulas[0] & formulas[1] or formulas[0] & formulas[2] or formulas[1] & formulas[2])
    n = sum(len(a[s]) for s in a)
    assert n == 24 and all(len(a[s]) >= 2 for s in a)
    assert sum("C" in f for f in formulas) == 1
    b = build_corpus(src, split_by="composition", seed=3, **kw)
    c = build_corpus(src, split_by="composition", seed=4, **kw)
    assert all(a[s]["id"] == b[s]["id"] for s in a)
    assert any(a[s]["id"] != c[s]["id"] for s in a)
    r1 = build_corpus(src, split_by="random", seed=3, **kw)
    r2 = build_corpus(src, split_by="random", seed=3, **kw)
    assert all(r1[s]["id"] == r2[s]["id"] for s in r1)
    # the split of a record is a seeded hash of its id (of its formula by composition): it depends
    # on nothing else, so neither on the order work finishes nor on the other records
    for k, name in enumerate(("train", "validation", "test")):
        assert all(split_of(i, 3, (0.6, 0.2, 0.2)) == k for i in r1[name]["id"])
        assert all(split_of(f, 3, (0.6, 0.2, 0.2)) == k for f in a[name]["formula"])


# --------------------------------------------------------------------------- saving, parallel, stats, CLI

def test_save_load_parallel_and_token_counts(tok, tmp_path, perov):
    from transformers import AutoTokenizer

    out = tmp_path / "corpus"
    serial = build_corpus([str(_data() / "perov_5" / "val.csv")], out=out, tokenizer=tok, limit=40, progress=False)
    parallel = build_corpus([str(_data() / "perov_5" / "val.csv")], tokenizer=tok, limit=40, num_proc=2, progress=False)
    assert all(serial[s]["text"] == parallel[s]["text"] for s in serial)
    loaded = load_corpus(out)
    assert loaded["train"]["input_ids"] == serial["train"]["input_ids"]
    assert loaded.summary["config"]["limit"] == 40
    saved_tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    assert saved_tok(loaded["train"][0]["text"])["input_ids"] == loaded["train"][0]["input_ids"]

    counts = token_counts(out)
    train = loaded["train"]
    for el in ("O", "N", "Ba", "Sr"):
        expected = sum(tok.convert_ids_to_tokens(row).count(el) for row in train["input_ids"])
        assert counts.loc[el, "tokens"] == expected
        assert counts.loc[el, "documents"] == sum(el in tok.convert_ids_to_tokens(row) for row in train["input_ids"])
        assert counts.loc[el, "structure_tokens"] == expected and counts.loc[el, "header_tokens"] == 0
    assert counts.loc["O", "tokens"] > 0 and counts.loc["Pu", "tokens"] == 0
    with pytest.raises(DataNotFoundError):
        load_corpus(tmp_path)


def test_token_counts_agree_across_tokenizers_and_skip_space_group_tokens(tmp_path):
    # promethium in space group Pm (No. 6): " Pm" is the space-group token, not the element
    table = pd.DataFrame({"mbid": ["a", "b"], "composition": ["Pm1 Cd2", "Cm2 O3"], "spg_num": [6, 8]})
    path = tmp_path / "pm.jsonl"
    table.to_json(path, orient="records", lines=True)
    sources = [str(path), _nacl(), _random_si(0)]
    kw = dict(dedupe=None, split=(1.0, 0.0, 0.0), progress=False)
    cif = token_counts(build_corpus(sources, tokenizer="crystext-cif", **kw), "crystext-cif")
    compact = token_counts(build_corpus(sources, tokenizer="crystext-compact", **kw), "crystext-compact")
    assert cif.loc["Pm", "tokens"] == 3 and cif.loc["Pm", "header_tokens"] == 3  # data_, structural, sum
    assert cif.loc["Cm", "tokens"] == 3 and cif.loc["Cd", "documents"] == 1
    # Na: data_, structural, sum (3) + one site row (symbol and label: 2) = 5
    assert cif.loc["Na", "tokens"] == 5 and cif.loc["Na", "structure_tokens"] == 5
    assert cif.loc["Si", "tokens"] == 3 + 2 * 3
    pd.testing.assert_frame_equal(cif, compact)


def test_cli_build_and_stats(tmp_path, capsys):
    from crystext.cli import main

    out = tmp_path / "c"
    assert main(["corpus", "build", "aflow-prototypes", "--out", str(out), "--limit", "12", "--quiet", "--seed", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sources"]["aflow-prototypes"]["records"] == 12
    assert summary["command"] == (
        f"crystext corpus build aflow-prototypes --out {out} --tokenizer crystext-cif --num-proc 1 "
        "--dedupe formula-spacegroup --split 0.9 0.05 0.05 --split-by random --seed 1 --symprec 0.1 "
        "--disorder raise --max-atoms 1000 --time-limit 60 --max-tokens 1024 --shard-size 2000 --limit 12"
    )
    md = tmp_path / "cov.md"
    assert main(["corpus", "stats", str(out), "--markdown", str(md)]) == 0
    shown = capsys.readouterr().out
    assert "tokens" in shown and "| element |" in md.read_text()
    assert main(["corpus", "build", str(tmp_path / "absent"), "--out", str(out)]) == 2


def test_stats_of_parts_add_up_to_the_whole(tmp_path, capsys):
    """Counts over the parts a run is trained on in turn equal the counts of the corpus they split."""
    from crystext.cli import main
    from crystext.corpus import add_counts, token_counts

    table = tmp_path / "t.parquet"
    _p1_table(12).to_parquet(table)
    common = ["--quiet", "--split", "1", "0", "0", "--dedupe", "none"]
    dirs = []
    for name, extra in (("whole", []), ("p1", ["--part", "1/2"]), ("p2", ["--part", "2/2"])):
        dirs.append(tmp_path / name)
        assert main(["corpus", "build", str(table), "--out", str(dirs[-1]), *common, *extra]) == 0
    whole, p1, p2 = (token_counts(d) for d in dirs)
    assert 0 < p1.tokens.sum() < whole.tokens.sum()
    total = add_counts([p1, p2])
    pd.testing.assert_frame_equal(total, whole)
    md = tmp_path / "cov.md"
    assert main(["corpus", "stats", str(dirs[1]), str(dirs[2]), "--markdown", str(md), "--min-count", "1"]) == 0
    text = md.read_text()
    assert "2 corpora added up" in text and "## Corpus 1" in text and "## Corpus 2" in text
    assert f"| O | 8 | {whole.loc['O', 'tokens']:,} |" in text


# --------------------------------------------------------------------------- streaming, scale, restart

def _p1(elements: list[str], seed: int) -> Structure:
    """A random P1 cell (fast to convert: no symmetry search worth the name)."""
    rng = np.random.default_rng(seed)
    return Structure(Lattice.from_parameters(4.1, 4.7, 5.3, 71, 83, 97), elements, rng.random((len(elements), 3)))


def _p1_table(n: int, offset: int = 0) -> pd.DataFrame:
    els = ["Si", "Ge", "Sn", "C", "Ti", "Zr"]
    rows = []
    for k in range(offset, offset + n):
        s = _p1([els[k % 6], els[(k // 6) % 6], "O"], k)
        rows.append({"material_id": f"m-{k}", "cif": s.to(fmt="cif"), "energy": float(k)})
    return pd.DataFrame(rows)


def test_table_readers_stream_in_chunks(tmp_path):
    df = _p1_table(7)
    df.to_parquet(tmp_path / "t.parquet", row_group_size=3)
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    for name in ("t.parquet", "t.csv", "t.jsonl"):
        path = tmp_path / name
        assert table_columns(path) == ["material_id", "cif", "energy"]
        chunks = list(iter_table_chunks(path, columns=["material_id", "energy"], chunk_rows=2))
        assert [len(c) for c in chunks] == [2, 2, 2, 1] or name == "t.parquet"  # parquet: batches within row groups
        assert all(len(c) <= 2 for c in chunks)
        both = pd.concat(chunks)
        assert both.material_id.tolist() == df.material_id.tolist() and both.index.tolist() == list(range(7))
        assert list(both.columns) == ["material_id", "energy"]
        assert [r["energy"] for r in iter_table_records(path, chunk_rows=3)] == df.energy.tolist()
    with pytest.raises(ConfigError, match=r"t\.parquet.*no column.*'formula'"):
        next(iter_table_chunks(tmp_path / "t.parquet", columns=["formula"]))
    with pytest.raises(DataNotFoundError, match="absent.csv"):
        table_columns(tmp_path / "absent.csv")


def _rows(corpus) -> dict:
    return {s: list(zip(corpus[s]["id"], corpus[s]["text"], corpus[s]["input_ids"])) for s in corpus}


def test_kill_and_resume_gives_the_same_corpus(tok, tmp_path):
    _p1_table(11).to_parquet(tmp_path / "mp.parquet", row_group_size=4)
    src = [str(tmp_path / "mp.parquet")]
    kw = dict(tokenizer=tok, dedupe="text", progress=False, shard_size=3, split=(0.5, 0.25, 0.25))
    whole = build_corpus(src, out=tmp_path / "whole", **kw)
    out = tmp_path / "cut"
    assert build_corpus(src, out=out, max_new_shards=2, **kw) is None  # "killed" after two shards
    manifest = json.loads((out / "_build" / "manifest.json").read_text())
    assert [(s["start"], s["stop"]) for s in manifest["shards"]] == [(0, 3), (3, 6)] and not manifest["complete"]
    first = (out / "_build" / "shard-00000.arrow").stat().st_mtime_ns
    (out / "_build" / "shard-00002.arrow.tmp").write_bytes(b"half a shard")  # what a kill mid-write leaves
    resumed = build_corpus(src, out=out, **kw)
    assert (out / "_build" / "shard-00000.arrow").stat().st_mtime_ns == first  # finished shards kept
    manifest = json.loads((out / "_build" / "manifest.json").read_text())
    assert [(s["start"], s["stop"]) for s in manifest["shards"]] == [(0, 3), (3, 6), (6, 9), (9, 11)]
    assert _rows(resumed) == _rows(whole) and sum(len(resumed[s]) for s in resumed) == 11
    assert resumed.summary["sources"] == whole.summary["sources"]
    assert _rows(load_corpus(out)) == _rows(whole)
    # a different conversion config is refused, unless asked to start over
    with pytest.raises(ConfigError, match="different build.*--fresh"):
        build_corpus(src, out=out, **{**kw, "max_tokens": 500})
    again = build_corpus(src, out=out, fresh=True, **{**kw, "max_tokens": 500})
    assert sum(len(again[s]) for s in again) + again.summary["skip_reasons"].get("DocumentTooLongError", 0) == 11
    # a new split of the same shards converts nothing
    stamp = (out / "_build" / "shard-00000.arrow").stat().st_mtime_ns
    build_corpus(src, out=out, **{**kw, "max_tokens": 500, "seed": 5})
    assert (out / "_build" / "shard-00000.arrow").stat().st_mtime_ns == stamp


def test_parts_are_disjoint_random_samples_that_keep_their_split(tok, tmp_path):
    _p1_table(24).to_parquet(tmp_path / "mp.parquet", row_group_size=5)
    src = [str(tmp_path / "mp.parquet")]
    kw = dict(tokenizer=tok, dedupe="text", progress=False, split=(0.5, 0.25, 0.25))
    whole = build_corpus(src, **kw)
    parts = [build_corpus(src, out=tmp_path / f"p{k}", part=f"{k}/3", **kw) for k in (1, 2, 3)]
    ids = [{s: set(p[s]["id"]) for s in p} for p in parts]
    for s in whole:  # the parts add up to the whole, split by split
        assert set().union(*(i[s] for i in ids)) == set(whole[s]["id"])
    every = [x for i in ids for s in i for x in i[s]]
    assert len(every) == len(set(every)) == 24 and all(len(every_part) < 24 for every_part in
                                                       [[x for s in i for x in i[s]] for i in ids])
    assert parts[0].summary["config"]["part"] == "1/3"
    assert sum(v["records"] for v in parts[0].summary["sources"].values()) == len([x for s in ids[0] for x in ids[0][s]])
    assert sum(len(c) for c in build_corpus(src, part=(2, 3), limit=2, **kw).values()) == 2
    for bad in ("0/3", "4/3", "a/b", "3"):
        with pytest.raises(ConfigError, match="part must be"):
            build_corpus(src, part=bad, **kw)


def test_parallel_build_matches_serial(tok, tmp_path):
    _p1_table(40).to_parquet(tmp_path / "mp.parquet")
    kw = dict(tokenizer=tok, progress=False, shard_size=7, dedupe=None)
    serial = build_corpus([str(tmp_path / "mp.parquet")], out=tmp_path / "a", num_proc=1, **kw)
    parallel = build_corpus([str(tmp_path / "mp.parquet")], out=tmp_path / "b", num_proc=2, **kw)
    assert _rows(serial) == _rows(parallel)
    assert serial.summary["build"]["shards"] == 6


def test_dedupe_across_sources_and_skip_reasons(tok, tmp_path):
    table = _p1_table(6)
    table.to_parquet(tmp_path / "a.parquet")
    folder = tmp_path / "cifs"
    folder.mkdir()
    for row in table.iloc[2:5].itertuples():  # the same three structures, as CIF files
        (folder / f"{row.material_id}.cif").write_text(row.cif)
    big = Structure(Lattice.cubic(9.0), ["Si"] * 9, np.random.default_rng(0).random((9, 3)))
    (folder / "big.cif").write_text(big.to(fmt="cif"))
    long_one = _p1(["Si", "Ge", "O", "O", "O", "O"], 99)
    (folder / "long.cif").write_text(long_one.to(fmt="cif"))
    (folder / "bad.cif").write_text("not a cif\n")
    n_short = max(len(tok(structure_to_text(Structure.from_str(c, fmt="cif")))["input_ids"]) for c in table.cif)
    n_long = len(tok(structure_to_text(long_one))["input_ids"])
    assert n_long > n_short
    out = tmp_path / "c"
    corpus = build_corpus([str(tmp_path / "a.parquet"), str(folder)], out=out, tokenizer=tok, dedupe="text",
                          max_atoms=8, max_tokens=n_short, progress=False)
    s = corpus.summary
    d = tmp_path.name
    assert s["sources"][f"{d}/a"] == {"kind": "structure", "records": 6, "skipped": 0, "duplicates": 0, "documents": 6}
    assert s["sources"]["cifs"] == {"kind": "structure", "records": 6, "skipped": 3, "duplicates": 3, "documents": 0}
    assert s["skip_reasons"] == {"duplicate": 3, "StructureTooLargeError": 1, "DocumentTooLongError": 1, "CIFParseError": 1}
    assert s["limits"]["max_atoms"] == 8 and s["limits"]["max_tokens"] == n_short and "never cut" in s["limits"]["rule"]
    assert sorted(i for sp in corpus for i in corpus[sp]["id"]) == sorted(f"{d}/a:{m}" for m in table.material_id)
    assert all(n <= n_short for sp in corpus for n in corpus[sp]["num_tokens"])
    with open(out / "skipped.csv") as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    assert rows["cifs:big"]["reason"] == "StructureTooLargeError" and "9 atoms" in rows["cifs:big"]["message"]
    assert rows["cifs:long"]["reason"] == "DocumentTooLongError" and f"{n_long} tokens" in rows["cifs:long"]["message"]
    # structure matching also finds them (across sources; StructureMatcher within formula + space group)
    st = build_corpus([str(tmp_path / "a.parquet"), str(folder)], tokenizer=tok, dedupe="structure",
                      max_atoms=8, max_tokens=n_short, progress=False)
    assert st.summary["sources"]["cifs"]["duplicates"] == 3


def test_time_limit_skips_and_counts(tok, tmp_path):
    folder = tmp_path / "cifs"
    folder.mkdir()
    (folder / "a.cif").write_text(_p1(["Si", "O"], 1).to(fmt="cif"))
    corpus = build_corpus([str(folder)], tokenizer=tok, time_limit=1e-6, progress=False)
    assert corpus.summary["skip_reasons"] == {"RecordTimeoutError": 1}
    assert corpus.summary["sources"]["cifs"]["documents"] == 0


def test_split_fractions_hold_in_expectation():
    ids = [f"mp/structures-00:mp-{k}" for k in range(20000)]
    counts = np.bincount([split_of(i, 0, (0.9, 0.05, 0.05)) for i in ids], minlength=3) / len(ids)
    assert np.allclose(counts, [0.9, 0.05, 0.05], atol=0.01)
    assert {split_of(i, 0, (1.0, 0.0, 0.0)) for i in ids[:500]} == {0}
    assert [split_of(i, 0, (0.5, 0.25, 0.25)) for i in ids[:50]] != [split_of(i, 1, (0.5, 0.25, 0.25)) for i in ids[:50]]


def test_structure_matching_group_over_the_time_limit_is_kept_whole():
    from crystext.corpus.build import _init_worker, match_group

    texts = [structure_to_text(_nacl()), structure_to_text(_nacl(5.8))]
    try:
        _init_worker({"time_limit": None})
        assert match_group(texts) == [1]  # scaled copy: StructureMatcher finds it
        _init_worker({"time_limit": 1e-6})
        assert match_group(texts) is None  # given up: the caller keeps both and counts the group
    finally:
        _init_worker({})
