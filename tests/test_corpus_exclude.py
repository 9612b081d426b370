"""Benchmark structures out of a pretraining corpus (``crystext corpus exclude``)."""

from __future__ import annotations

import pandas as pd
import pytest

from crystext.cli import main
from crystext.corpus import build_corpus, exclude_structures, held_out_hashes, load_corpus
from crystext.errors import ConfigError, DataNotFoundError
from crystext.text import structure_to_text, text_to_structure


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("exclude") / "corpus"
    build_corpus("aflow-prototypes", out=out, limit=30, split=(0.8, 0.1, 0.1), progress=False)
    return out


def _task_with(folder, texts_val, texts_test):
    """A structure task folder whose val/test tables hold the CIFs of these canonical texts."""
    folder.mkdir(parents=True)
    for name, texts in (("val", texts_val), ("test", texts_test)):
        cifs = [text_to_structure(t).to(fmt="cif") for t in texts]
        pd.DataFrame({"material_id": range(len(cifs)), "cif": cifs, "target": 0.0}).to_csv(folder / f"{name}.csv", index=False)


def test_held_out_structures_leave_the_corpus_and_are_counted(corpus, tmp_path):
    dd = load_corpus(corpus)
    train = dd["train"]["text"]
    # two training documents are a task's validation rows, one its test row; one test row is new
    new = structure_to_text(text_to_structure(dd["test"]["text"][0]).copy().scale_lattice(500.0))
    _task_with(tmp_path / "data" / "toy", train[:2], [train[5], new])
    hashes = held_out_hashes(tmp_path / "data", ["toy"], text_cache=tmp_path / "texts.jsonl")
    assert len(hashes) == 4 and set(hashes.values()) == {"toy"}
    out = exclude_structures(corpus, tmp_path / "clean", hashes)
    assert len(out["train"]) == len(dd["train"]) - 3
    assert len(out["validation"]) == len(dd["validation"]) and len(out["test"]) == len(dd["test"])
    kept = [t for i, t in enumerate(train) if i not in (0, 1, 5)]
    assert out["train"]["text"] == kept  # order kept, nothing else touched
    assert out.summary["excluded_held_out"]["removed"]["train"] == {"toy": 3}
    assert out.summary["splits"]["train"]["documents"] == len(kept)
    assert (tmp_path / "clean" / "tokenizer" / "tokenizer.json").is_file()


def test_the_command_names_what_it_removed(corpus, tmp_path, capsys):
    train = load_corpus(corpus)["train"]["text"]
    _task_with(tmp_path / "data" / "toy", train[:1], train[1:2])
    assert main(["corpus", "exclude", str(corpus), "--out", str(tmp_path / "clean"), "--data", str(tmp_path / "data"),
                 "--tasks", "toy", "--text-cache", str(tmp_path / "t.jsonl")]) == 0
    assert "2 documents removed" in capsys.readouterr().out


def test_bad_inputs_are_named(corpus, tmp_path):
    with pytest.raises(DataNotFoundError, match="nowhere"):
        held_out_hashes(tmp_path, ["nowhere"], text_cache=tmp_path / "t.jsonl")
    with pytest.raises(ConfigError, match="another folder"):
        exclude_structures(corpus, corpus, {})
