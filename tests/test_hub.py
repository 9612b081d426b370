"""Hub release: export + offline verification, model card metadata, loading by repo id offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from crystext.errors import ConfigError
from crystext.hub import (HubError, _benchmark_section, benchmark_tables, export_for_hub, publish, read_benchmarks,
                          render_card)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny, untrained run folder: enough to exercise the whole release path."""
    from crystext.modeling import build_model
    from crystext.tokenization import load_tokenizer

    tok = load_tokenizer("crystext-cif")
    model = build_model("tiny", tok)
    run = tmp_path_factory.mktemp("runs") / "tiny-test"
    model.save_pretrained(run)
    tok.save_pretrained(run)
    return run


@pytest.fixture()
def results_csv(tmp_path):
    rows = []
    for rep, base in [("crystext-tiny-test", 10.0), ("magpie", 12.0), ("mat2vec", 13.0)]:
        for seed in (0, 1):
            # hgb wins on validation; ridge has the lower *test* MAE, which must not be picked
            rows.append(("aflow__ael_bulk_modulus_vrh", rep, "mean", "hgb", seed, "mae", base + seed))
            rows.append(("aflow__ael_bulk_modulus_vrh", rep, "mean", "hgb", seed, "val_mae", base))
            rows.append(("aflow__ael_bulk_modulus_vrh", rep, "mean", "ridge", seed, "mae", base - 5))
            rows.append(("aflow__ael_bulk_modulus_vrh", rep, "mean", "ridge", seed, "val_mae", base + 5))
    df = pd.DataFrame(rows, columns=["task", "representation", "pooling", "regressor", "seed", "metric", "value"])
    path = tmp_path / "results.csv"
    df.to_csv(path, index=False)
    return path


def test_benchmark_tables_pick_on_validation_and_bold_winner(results_csv):
    md, index = benchmark_tables(pd.read_csv(results_csv), "crystext-tiny-test")
    # hgb is picked on validation although ridge has the lower test MAE; mean ± std over two seeds
    assert "**10.5 ± 0.71**" in md and "**5 ±" not in md and "| 7 ±" not in md
    assert "12.5 ± 0.71" in md and "magpie" in md
    assert index[0]["metrics"][0]["value"] == pytest.approx(10.5)
    assert "picked on validation" in index[0]["metrics"][0]["name"]


def test_a_later_benchmark_replaces_the_rows_of_the_tasks_it_reran(results_csv, tmp_path):
    full = pd.read_csv(results_csv)
    probe = full.assign(task="probes/geometry")
    first = tmp_path / "full"
    first.mkdir()
    pd.concat([full, probe]).to_csv(first / "results.csv", index=False)
    rerun = tmp_path / "rerun"
    rerun.mkdir()
    probe.assign(value=probe["value"] + 100.0).to_csv(rerun / "results.csv", index=False)
    results, selected, origin = read_benchmarks([first, rerun])
    assert selected is None  # neither folder has selected.csv: picks are recomputed
    assert len(results) == 2 * len(full)  # the old probe rows are gone, not doubled
    assert results.loc[results["task"] == "probes/geometry", "value"].min() >= 100.0
    assert origin == {"aflow__ael_bulk_modulus_vrh": first, "probes/geometry": rerun}
    md, index = _benchmark_section([first, rerun], "crystext-tiny-test")
    assert "110.5 ± 0.71" in md and "**10.5 ± 0.71**" in md
    assert f"probes/geometry from `{rerun}`" in md
    with pytest.raises(ConfigError, match="not found"):
        read_benchmarks([first, tmp_path / "missing"])


def test_benchmark_tables_refuse_results_without_validation_rows(results_csv):
    df = pd.read_csv(results_csv)
    md, index = benchmark_tables(df[df.metric == "mae"], "crystext-tiny-test")
    assert index == [] and "validation" in md


def test_card_metadata_parses(tiny_run, results_csv):
    from huggingface_hub import ModelCard

    card = ModelCard(render_card(tiny_run, "someone/tiny-test", results_csv))
    meta = card.data.to_dict()
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "feature-extraction"
    assert {"materials", "crystal-structure", "cif"} <= set(meta["tags"])
    assert meta["model-index"][0]["results"][0]["metrics"][0]["type"] == "mae"
    assert 'pipeline("crystal-embedding", model="someone/tiny-test")' in card.text


def test_card_quotes_generation_rates_with_their_interval(tiny_run, tmp_path):
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    rates = {"parsable": 0.5, "valid": 0.0, "crystallm_valid": 0.0625, "n": 32}
    (run / "generation.json").write_text(json.dumps({
        "temperature": "0.7", "top_k": 0, "top_p": 1.0, "command": "python validity.py",
        "prompt_sets": {"mp_e_form test, T=0.7": rates},
        "intervals": {"mp_e_form test, T=0.7": {"valid": [0.0, 0.1072], "crystallm_valid": [0.0173, 0.2015]}}}))
    card = render_card(run, "someone/tiny-test")
    assert "| prompts | samples | parsable | valid | crystallm valid | valid, 95 % interval |" in card
    assert "| mp_e_form test, T=0.7 | 32 | 0.500 | 0.000 | 0.062 | 0.000-0.107 |" in card


def test_card_says_which_benchmark_structures_left_the_corpus(tiny_run, tmp_path):
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert "corpus exclude" not in render_card(run, "someone/tiny-test")
    summary = {"sources": {"mp/structures-00": {"documents": 100}}, "splits": {"train": {"documents": 73}},
               "excluded_held_out": {"from": "mp", "held_out_structures": 21100,
                                     "removed": {"train": {"mp_e_form": 27}, "validation": {"mp_e_form": 2}, "test": {}}}}
    (run / "corpus_summary.json").write_text(json.dumps(summary))
    card = render_card(run, "someone/tiny-test")
    assert ("`crystext corpus exclude` removed every document whose structure is a validation or test structure "
            "of a benchmark task (21,100 checked): 27 from `train`, 2 from `validation`, 0 from `test` (mp_e_form)") in card


def test_publish_export_loads_offline_in_fresh_process(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_NEVERWRITETHISTOKEN")
    out = tmp_path / "export"
    proc = subprocess.run(
        [sys.executable, "-m", "crystext", "publish", str(tiny_run), "--repo-id", "x/y", "--export", str(out)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "element_embeddings.csv"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    for path in out.iterdir():
        assert b"hf_NEVERWRITETHISTOKEN" not in path.read_bytes(), path
    assert "hf_NEVERWRITETHISTOKEN" not in proc.stdout + proc.stderr


def test_network_failure_keeps_verified_folder(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any upload attempt fails as offline
    out = tmp_path / "release"
    with pytest.raises(HubError, match="intact"):
        publish(tiny_run, "x/y", export_dir=out)
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()


def test_export_refuses_pickles_and_bad_repo_ids(tiny_run, tmp_path):
    from crystext.errors import ConfigError

    with pytest.raises(ConfigError, match="OWNER/NAME"):
        export_for_hub(tiny_run, tmp_path / "a", "no-slash", verify=False)
    bad_run = tmp_path / "pickled"
    shutil.copytree(tiny_run, bad_run)
    (bad_run / "model.safetensors").unlink()
    (bad_run / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(ConfigError, match="safetensors"):
        export_for_hub(bad_run, tmp_path / "b", "x/y", verify=False)


def test_repo_id_resolves_from_offline_cache(tiny_run, tmp_path):
    """A Hub repo id loads through from_pretrained's cache with HF_HUB_OFFLINE=1."""
    cache = tmp_path / "hub"
    commit = "0" * 40
    snap = cache / "models--someone--tiny-test" / "snapshots" / commit
    shutil.copytree(tiny_run, snap)
    (cache / "models--someone--tiny-test" / "refs").mkdir(parents=True)
    (cache / "models--someone--tiny-test" / "refs" / "main").write_text(commit)
    code = (
        "import crystext, transformers;"
        "from pymatgen.core import Lattice, Structure;"
        "s = Structure.from_spacegroup('Fm-3m', Lattice.cubic(5.69), ['Na', 'Cl'], [[0,0,0],[.5,.5,.5]]);"
        "e = transformers.pipeline('crystal-embedding', model='someone/tiny-test');"
        "print(e(s).shape, crystext.element_embeddings('someone/tiny-test').shape)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    width = json.loads((tiny_run / "config.json").read_text())["n_embd"]
    assert f"({width},)" in proc.stdout
