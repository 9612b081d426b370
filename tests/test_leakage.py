"""The leakage identity of a run follows its whole training history, not just its init run."""

from __future__ import annotations

import json

from crystext.benchmark.leakage import corpus_identity
from crystext.corpus.identity import IDENTITY_FILE, identity_bytes


def _run(folder, name, init, lineage, formulas, hashes, includes_init):
    folder.mkdir(parents=True)
    (folder / "training_config.json").write_text(json.dumps({"init": init, "lineage": lineage}))
    (folder / IDENTITY_FILE).write_bytes(identity_bytes({
        "formulas": formulas, "structure_text_sha1": hashes, "formula_spacegroup": [],
        "includes_init": includes_init}))


def test_a_run_trained_part_by_part_under_one_name_counts_the_run_it_started_from(tmp_path):
    """``mp`` was trained from ``compact``, then from itself part by part; its shipped identity says
    it includes its init run (itself) but lacks compact's corpus, which the lineage names."""
    _run(tmp_path / "compact", "compact", None, [], ["NaCl"], ["aaaaaaaaaaaaaaaa"], False)
    history = [{"run": "compact", "init": None}, {"run": "mp", "init": "compact"}, {"run": "mp", "init": "mp"}]
    _run(tmp_path / "mp", "mp", "mp", history, ["KBr"], ["bbbbbbbbbbbbbbbb"], True)
    ident = corpus_identity(tmp_path / "mp")
    assert ident.formulas == {"NaCl", "KBr"} and ident.structures == {"aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"}
    assert "plus earlier run compact" in ident.status
    # without the earlier run beside it, the count is a lower bound of what the run saw: only its own
    (tmp_path / "compact" / IDENTITY_FILE).unlink()
    (tmp_path / "compact" / "training_config.json").unlink()
    alone = corpus_identity(tmp_path / "mp")
    assert alone.formulas == {"KBr"} and "earlier run compact: corpus not available" in alone.status
