"""Element vectors the pretraining corpus never (or barely) trained are flagged the same way for every run."""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest

from crystext.embeddings import MIN_ELEMENT_DOCUMENTS, element_embeddings, save_element_csv, trained_flags_path
from crystext.modeling import build_model
from crystext.settings import REPO_ROOT
from crystext.tokenization import load_tokenizer


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run whose corpus identity holds Na in 25 formulas, Cl in 20, Fe in 3 and nothing else."""
    folder = tmp_path_factory.mktemp("flags") / "run"
    tok = load_tokenizer("crystext-pair")
    build_model("tiny", tok, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    formulas = [f"Na{k}Cl{k}" for k in range(1, 21)] + [f"Na{k}" for k in range(1, 6)] + ["Fe", "Fe2", "Fe3"]
    (folder / "corpus_identity.json").write_text(json.dumps({"formulas": formulas}))
    return folder


def test_elements_under_the_stated_count_are_flagged_and_warned(run):
    with pytest.warns(UserWarning, match=rf"fewer than {MIN_ELEMENT_DOCUMENTS} pretraining documents"):
        df = element_embeddings(run)
    assert df.attrs["documents"][["Na", "Cl", "Fe", "Ne"]].tolist() == [25, 20, 3, 0]
    assert "Fe" in df.attrs["untrained"] and "Ne" in df.attrs["untrained"]
    assert "Na" not in df.attrs["untrained"] and "Cl" not in df.attrs["untrained"]
    assert "Ne" in df.attrs["unseen"] and "Fe" not in df.attrs["unseen"]


def test_exported_csv_keeps_its_layout_and_the_flags_go_beside_it(run, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = element_embeddings(run)
    path = save_element_csv(df, tmp_path / "vectors.csv")
    table = pd.read_csv(path, index_col=0)
    assert list(table.columns) == [str(i) for i in range(df.shape[1])] and len(table) == len(df)
    flags = pd.read_csv(trained_flags_path(path), index_col="element")
    assert trained_flags_path(path).name == "vectors.trained.csv"
    assert flags.loc["Na", "trained"] and not flags.loc["Fe", "trained"] and flags.loc["Fe", "documents"] == 3
    assert set(flags.index[~flags.trained]) == set(df.attrs["untrained"])


def test_released_mp_model_flags_neon_which_none_of_its_corpora_held():
    folder = REPO_ROOT / "models" / "crystext-mp"
    if not folder.is_dir():
        pytest.skip("the crystext-mp release is not in this checkout")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = element_embeddings(folder)
    assert "Ne" in df.attrs["untrained"] and "O" not in df.attrs["untrained"]
    assert df.attrs["documents"]["O"] > 1000
