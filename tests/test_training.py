"""The training loop: run folder, exact resume, gradient accumulation, fine-tuning, 2-process DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from crystext.errors import ConfigError, DataNotFoundError
from crystext.modeling import load_preset
from crystext.precision import accelerate_mixed_precision, resolve_precision
from crystext.settings import REPO_ROOT
from crystext.training import epoch_plan, lr_at, pretrain

HEADERS = [("Fe2O3", 167), ("NaCl", 225), ("TiO2", 136), ("SrTiO3", 221), ("GaAs", 216), ("MgO", 225),
           ("ZnO", 186), ("Si", 227), ("CaF2", 225), ("LiFePO4", 62), ("BaTiO3", 99), ("Al2O3", 167)]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40 AFLOW prototypes (full structures) + 12 header-only documents, both kinds mixed."""
    from crystext.corpus import build_corpus

    root = tmp_path_factory.mktemp("corpus")
    table = root / "headers.csv"
    pd.DataFrame(HEADERS, columns=["composition", "spg_num"]).to_csv(table, index=False)
    out = root / "corpus"
    build_corpus(["aflow-prototypes", str(table)], out=out, limit=40, split=(0.7, 0.15, 0.15), progress=False)
    return out


def _tiny(dropout: float = 0.1, **training) -> dict:
    preset = load_preset("tiny")
    preset["model"]["dropout"] = dropout
    preset["training"].update(training)
    return preset


def _weights(run) -> dict:
    return load_file(run / "model.safetensors")


def _absolute_paths(value) -> list[str]:
    if isinstance(value, dict):
        return [p for v in value.values() for p in _absolute_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _absolute_paths(v)]
    return [value] if isinstance(value, str) and (value.startswith("/") or " /" in value) else []


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_run_folder_is_a_loadable_save_pretrained_folder(corpus, tmp_path):
    run = pretrain("tiny", corpus, tmp_path / "run", max_steps=4, progress=False)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "training_config.json", "log.csv",
                 "loss.png", "eval.json"):
        assert (run / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(run)
    tok = AutoTokenizer.from_pretrained(run)
    assert model.config.vocab_size == len(tok)
    log = pd.read_csv(run / "log.csv")
    assert log.step.tolist() == [1, 2, 3, 4]
    assert log.eval_loss.notna().tolist() == [False, False, False, True]  # eval_interval 4
    assert (log.tokens.diff().dropna() > 0).all() and (log.tokens_per_s > 0).all()
    assert log.lr.iloc[0] < log.lr.iloc[1]  # warm-up
    info = json.loads((run / "training_config.json").read_text())
    assert info["steps"] == 4 and info["world_size"] == 1
    # the preset says auto; the run records the setting and what this machine resolved it to
    resolved = resolve_precision("auto", "cpu", announce=False)
    assert info["precision"]["setting"] == "auto" and info["precision"]["resolved"] == resolved
    assert info["mixed_precision"] == accelerate_mixed_precision(resolved)
    assert info["saved_dtype"] == "float32" and info["stopped_by"] == "max_steps"
    assert info["corpus"]["splits"]["train"]["kind_header"] > 0
    assert info["corpus"]["splits"]["train"]["kind_structure"] > 0
    report = json.loads((run / "eval.json").read_text())
    assert report["held_out_split"] == "test"
    assert set(report["test"]) >= {"loss", "tokens", "loss_structure"}
    assert 0 < report["unigram_baseline_entropy"] < np.log(len(tok))
    assert np.isfinite(report["held_out_loss"])
    assert report["test"]["complete"] and report["test"]["documents"] == report["test"]["of"] > 0
    # published JSON files carry no absolute local paths
    for name in ("training_config.json", "eval.json", "corpus_summary.json"):
        if (run / name).is_file():
            assert not _absolute_paths(json.loads((run / name).read_text())), name
    assert info["corpus"]["path"] == "corpus"  # the corpus folder's name, not where it lay


def test_exact_resume_matches_an_uninterrupted_run(corpus, tmp_path):
    preset = _tiny(max_steps=6, checkpoint_interval=3, eval_interval=3)
    full = pretrain(preset, corpus, tmp_path / "full", progress=False)
    part = pretrain(preset, corpus, tmp_path / "part", stop_at=3, progress=False)
    assert pd.read_csv(part / "log.csv").step.max() == 3
    assert (part / "checkpoints" / "step-0000003").is_dir()
    part = pretrain(preset, corpus, tmp_path / "part", resume=True, progress=False)
    a, b = pd.read_csv(full / "log.csv"), pd.read_csv(part / "log.csv")
    assert a.step.tolist() == b.step.tolist() == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(a.train_loss, b.train_loss, rtol=1e-6)  # same data, dropout, schedule
    np.testing.assert_allclose(a.eval_loss.dropna(), b.eval_loss.dropna(), rtol=1e-6)
    np.testing.assert_allclose(a.lr, b.lr, rtol=1e-12)
    assert a.tokens.tolist() == b.tokens.tolist()
    assert _max_diff(_weights(full), _weights(part)) < 1e-6
    info = json.loads((part / "training_config.json").read_text())
    assert info["resumed_from"] == "step-0000003"
    # the wall time adds up over both sessions, and the card says so
    assert info["sessions"] == 2
    assert info["train_time_s"] > info["train_time_s_this_session"] > 0
    assert json.loads((full / "training_config.json").read_text())["sessions"] == 1
    from crystext.hub import _train_time

    seconds, label = _train_time(info)
    assert seconds == info["train_time_s"] and "2 sessions" in label


def test_resume_true_needs_a_checkpoint(corpus, tmp_path):
    with pytest.raises(DataNotFoundError, match="no checkpoint"):
        pretrain("tiny", corpus, tmp_path / "none", resume=True, progress=False)


def test_resume_with_another_batch_geometry_refuses_unless_forced(corpus, tmp_path):
    preset = _tiny(max_steps=4, checkpoint_interval=2, batch_size=4)
    run = pretrain(preset, corpus, tmp_path / "run", stop_at=2, progress=False)
    with pytest.raises(ConfigError, match=r"batch_size 4 -> 2.*--force-resume"):
        pretrain(preset, corpus, run, overrides={"batch_size": 2}, progress=False)
    with pytest.raises(ConfigError, match=r"gradient_accumulation_steps 1 -> 2"):
        pretrain(preset, corpus, run, overrides={"batch_size": 2, "gradient_accumulation_steps": 2}, progress=False)
    assert pd.read_csv(run / "log.csv").step.max() == 2  # the refused resumes touched nothing
    pretrain(preset, corpus, run, overrides={"batch_size": 2}, force_resume=True, progress=False)
    info = json.loads((run / "training_config.json").read_text())
    assert info["resumed_from"] == "step-0000002" and info["steps"] == 4 and info["global_batch"] == 2


def test_time_budget_covers_evaluation_and_save(corpus, tmp_path):
    """With no time left after set-up the run still stops cleanly: one step, a final evaluation
    cut to the budget (one batch at least), every file written, the stop reason recorded."""
    run = pretrain(_tiny(max_steps=50), corpus, tmp_path / "run", max_time=0.0, progress=False)
    info = json.loads((run / "training_config.json").read_text())
    report = json.loads((run / "eval.json").read_text())
    assert info["steps"] == 1 and info["stopped_by"] == report["stopped_by"] == "max_time"
    assert info["max_steps"] == 50
    held = report[report["held_out_split"]]
    assert 0 < held["documents"] <= held["of"] and held["tokens"] > 0 and np.isfinite(held["loss"])
    assert (run / "model.safetensors").is_file() and (run / "checkpoints" / "step-0000001").is_dir()


def test_a_run_that_does_not_beat_the_unigram_baseline_says_so(corpus, tmp_path, capsys):
    from crystext.cli import main

    args = ["pretrain", "tiny", "--corpus", str(corpus), "--out", str(tmp_path / "run"), "--max-steps", "1",
            "--no-progress", "--set", "learning_rate=1e-6", "--set", "warmup_steps=0"]
    with pytest.warns(RuntimeWarning, match="not below the unigram baseline"):
        pretrain("tiny", corpus, tmp_path / "lib", max_steps=1, progress=False,
                 overrides={"learning_rate": 1e-6, "warmup_steps": 0})
    assert main(args) == 3
    captured = capsys.readouterr()
    assert "does not beat the unigram baseline" in captured.err and "model saved" not in captured.out
    assert not json.loads((tmp_path / "run" / "eval.json").read_text())["beats_unigram_baseline"]
    assert main(args + ["--fresh", "--allow-worse"]) == 0


def test_a_float16_release_loads_as_float32_and_says_what_was_saved(corpus, tmp_path):
    run = pretrain(_tiny(save_dtype="float16"), corpus, tmp_path / "run", max_steps=1, progress=False)
    assert {t.dtype for t in _weights(run).values()} == {torch.float16}  # what lies on disk
    info = json.loads((run / "training_config.json").read_text())
    assert info["saved_dtype"] == "float16" and info["loads_as"] == "float32"
    model = AutoModelForCausalLM.from_pretrained(run)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_accumulating_four_micro_batches_equals_one_batch_four_times_larger(corpus, tmp_path):
    from crystext.corpus import load_corpus

    # A whole number of global batches: a tail batch smaller than accumulation x processes is dropped
    # (it cannot be split), so with a tail the two plans hold different batches.
    dd = load_corpus(corpus)
    dd["train"] = dd["train"].select(range(32))
    runs = {}
    for batch, accum in ((8, 1), (2, 4)):
        preset = _tiny(dropout=0.0, batch_size=batch, gradient_accumulation_steps=accum, mixed_precision="no")
        runs[batch] = pretrain(preset, dd, tmp_path / f"b{batch}", max_steps=2, progress=False,
                               tokenizer=str(corpus / "tokenizer"))
    a, b = pd.read_csv(runs[8] / "log.csv"), pd.read_csv(runs[2] / "log.csv")
    np.testing.assert_allclose(a.train_loss, b.train_loss, rtol=1e-5)
    assert a.tokens.tolist() == b.tokens.tolist()
    assert _max_diff(_weights(runs[8]), _weights(runs[2])) < 1e-5


def test_fine_tuning_starts_from_the_init_run(corpus, tmp_path):
    base = pretrain(_tiny(dropout=0.0, mixed_precision="no"), corpus, tmp_path / "base", max_steps=3, progress=False)
    tuned = pretrain(None, corpus, tmp_path / "tuned", init=base, max_steps=1, progress=False,
                     overrides={"learning_rate": 1e-9, "min_learning_rate": 1e-9, "warmup_steps": 0})
    assert _max_diff(_weights(base), _weights(tuned)) < 1e-5  # a negligible step away from the init weights
    info = json.loads((tuned / "training_config.json").read_text())
    assert info["init"] == base.name and info["model"] == {"init": base.name}
    other = tmp_path / "other-corpus"
    shutil.copytree(corpus, other)
    shutil.rmtree(other / "tokenizer")
    from crystext.tokenization import load_tokenizer

    load_tokenizer("crystext-compact").save_pretrained(other / "tokenizer")
    with pytest.raises(ConfigError, match="tokenizer differs"):
        pretrain(None, other, tmp_path / "bad", init=base, max_steps=1, progress=False)


def test_epoch_plan_visits_every_document_once_per_epoch():
    lengths = np.random.default_rng(0).integers(10, 500, size=103)
    plans = [epoch_plan(lengths, 8, 4, seed=7, epoch=e) for e in (0, 1)]
    for plan in plans:
        seen = np.concatenate(plan)
        assert sorted(seen.tolist()) == list(range(103))
    assert [b.tolist() for b in epoch_plan(lengths, 8, 4, seed=7, epoch=0)] == [b.tolist() for b in plans[0]]
    assert [b.tolist() for b in plans[0]] != [b.tolist() for b in plans[1]]
    # bucketing: padding within a batch is far below that of random batches
    pad = lambda plan: sum(int(lengths[b].max() * len(b) - lengths[b].sum()) for b in plan)  # noqa: E731
    random_plan = np.array_split(np.random.default_rng(1).permutation(103), 13)
    assert pad(plans[0]) < 0.5 * pad(random_plan)


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = {"learning_rate": 1e-3, "min_learning_rate": 1e-4, "warmup_steps": 10, "max_steps": 110}
    lrs = [lr_at(s, cfg) for s in range(120)]
    assert np.all(np.diff(lrs[:10]) > 0) and lrs[9] < 1e-3
    assert lrs[10] == pytest.approx(1e-3)
    assert np.all(np.diff(lrs[10:111]) <= 0)
    assert lrs[110] == pytest.approx(1e-4) and lrs[119] == pytest.approx(1e-4)


def test_two_process_ddp_stays_in_step_and_equals_one_process(corpus, tmp_path):
    """accelerate launch --num_processes 2 on CPU (gloo): both ranks end with identical weights, and
    these equal one process accumulating the same two micro-batches."""
    preset = _tiny(dropout=0.0, batch_size=2, mixed_precision="no", eval_samples=4)
    config = tmp_path / "tiny-ddp.yaml"
    config.write_text(yaml.safe_dump({"model": preset["model"], "training": preset["training"]}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO_ROOT / "training" / "accelerate" / "cpu-ddp.yaml"), "--main_process_port", "29517",
           "-m", "crystext", "pretrain", str(config), "--corpus", str(corpus), "--out", str(tmp_path / "ddp"),
           "--max-steps", "2", "--no-progress", "--allow-worse"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((tmp_path / "ddp" / "training_config.json").read_text())
    assert info["world_size"] == 2 and info["global_batch"] == 4
    assert len(info["rank_param_sha256"]) == 2 and len(set(info["rank_param_sha256"])) == 1
    single = pretrain(config, corpus, tmp_path / "single", max_steps=2, progress=False,
                      overrides={"gradient_accumulation_steps": 2})
    a, b = pd.read_csv(tmp_path / "ddp" / "log.csv"), pd.read_csv(single / "log.csv")
    np.testing.assert_allclose(a.train_loss, b.train_loss, rtol=1e-5)
    assert _max_diff(_weights(tmp_path / "ddp"), _weights(single)) < 1e-5


def test_a_run_ships_its_corpus_identity_and_an_init_runs_corpus_counts_for_leakage(corpus, tmp_path):
    """corpus_identity.json.gz holds every structure document's text hash (the identity the leakage
    table computes for a test structure), formulas and (formula, space group) pairs; a run trained
    from another counts the init run's corpus too, and says so when the init run is missing."""
    from datasets import load_from_disk

    from crystext.benchmark.leakage import IDENTITY_FILE, corpus_identity, text_hash
    from crystext.corpus import build_corpus
    from crystext.corpus.identity import read_identity

    base = pretrain(_tiny(dropout=0.0, mixed_precision="no"), corpus, tmp_path / "runs" / "base", max_steps=1,
                    progress=False)
    ident = read_identity(base)
    assert IDENTITY_FILE.endswith(".gz") and (base / IDENTITY_FILE).read_bytes()[:2] == b"\x1f\x8b"
    dd = load_from_disk(str(corpus))
    texts = [r["text"] for sp in dd for r in dd[sp] if r["kind"] == "structure"]
    assert set(ident["structure_text_sha1"]) == {text_hash(t) for t in texts} and len(texts) >= 30
    assert ["Fe2O3", 167] in ident["formula_spacegroup"] and "LiFePO4" in ident["formulas"]

    table = tmp_path / "more.csv"
    pd.DataFrame([("CsCl", 221), ("KBr", 225)], columns=["composition", "spg_num"]).to_csv(table, index=False)
    more = build_corpus([str(table)], out=tmp_path / "more", split=(0.5, 0.25, 0.25), progress=False)
    tuned = pretrain(None, more, tmp_path / "runs" / "tuned", init=base, max_steps=1, progress=False)
    # the training history: a chain of runs keeps every run it came from, earliest first
    assert json.loads((base / "training_config.json").read_text())["lineage"] == []
    again = pretrain(None, more, tmp_path / "runs" / "again", init=tuned, max_steps=1, progress=False)
    history = json.loads((again / "training_config.json").read_text())["lineage"]
    assert [r["run"] for r in history] == ["base", "tuned"] and history[1]["init"] == "base"
    assert history[0]["corpus"] == corpus.name and history[0]["steps"] == 1 and history[0]["tokens"] > 0
    from crystext.hub import render_card

    card = render_card(again, "someone/again")
    assert "Training history" in card and card.index("| base |") < card.index("| tuned |") < card.index("| again (this run) |")
    both = corpus_identity(tuned)
    assert {"CsCl", "KBr", "Fe2O3"} <= both.formulas and {text_hash(t) for t in texts} <= both.structures
    assert "includes init run base" in both.status
    # an init run without corpus_identity.json (older releases) is looked up beside the run
    (base / IDENTITY_FILE).unlink()
    older = pretrain(None, more, tmp_path / "runs" / "older", init=base, max_steps=1, progress=False)
    assert "Fe2O3" not in read_identity(older)["formulas"]
    assert "plus init run base" in corpus_identity(older).status  # rebuilt from base's sources
    shutil.rmtree(base)
    # the tuned run's own file carries its init run's corpus: nothing is lost with the init run
    kept = corpus_identity(tuned)
    assert "Fe2O3" in kept.formulas and {text_hash(t) for t in texts} <= kept.structures
    alone = corpus_identity(older)
    assert "Fe2O3" not in alone.formulas and "init run base not found" in alone.status


def test_a_plain_json_identity_of_an_older_release_still_reads(tmp_path):
    """Releases written before the gzip identity ship ``corpus_identity.json``: read_identity, the
    leakage table and the element flags read it; a folder holding both prefers the gzip one."""
    import gzip

    from crystext.benchmark.leakage import corpus_identity
    from crystext.corpus.identity import IDENTITY_FILE, PLAIN_IDENTITY_FILE, identity_bytes, read_identity

    old = {"formulas": ["NaCl"], "structure_text_sha1": ["0123456789abcdef"], "formula_spacegroup": [["NaCl", 225]]}
    (tmp_path / PLAIN_IDENTITY_FILE).write_text(json.dumps(old))
    assert read_identity(tmp_path) == old
    ident = corpus_identity(tmp_path)
    assert ident.formulas == {"NaCl"} and ("NaCl", 225) in ident.formula_spacegroup
    assert PLAIN_IDENTITY_FILE in ident.status
    new = dict(old, formulas=["KBr"])
    (tmp_path / IDENTITY_FILE).write_bytes(identity_bytes(new))
    assert read_identity(tmp_path)["formulas"] == ["KBr"]
    assert identity_bytes(new) == identity_bytes(new)  # no timestamp: the same identity, the same bytes
    assert json.loads(gzip.decompress(identity_bytes(new))) == new
    assert read_identity(tmp_path / "nowhere") is None
