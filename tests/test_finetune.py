"""Fine-tuning: native regression folders, the three modes, resume, target scaling, bad task folders,
the ``crystal-property`` pipeline and the LM-branch features."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import transformers
from pymatgen.core import Lattice, Structure

from crystext.errors import ConfigError, DataNotFoundError
from crystext.finetune import finetune, finetuned_features, predict, run_finetune
from crystext.pipeline import PROPERTY_TASK, register_pipeline
from crystext.tasks import load_task

register_pipeline()

PAIRS = [("Na", "Cl"), ("K", "Br"), ("Mg", "O"), ("Ca", "O"), ("Li", "F")]


def rocksalt(a: str, b: str, length: float) -> Structure:
    """The 2-atom primitive cell of rock salt (cheap to build and to write as text)."""
    h = length / 2
    return Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a, b = PAIRS[i % len(PAIRS)]
        length = 4.0 + 2.0 * rng.random()
        rows.append({"material_id": f"m{seed}-{i}", "cif": rocksalt(a, b, length).to(fmt="cif"),
                     "heat": 100.0 + 10.0 * length + (i % len(PAIRS))})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from crystext.modeling import build_model
    from crystext.tokenization import load_tokenizer

    tok = load_tokenizer("crystext-cif")
    model = build_model("tiny", tok, seed=0)
    path = tmp_path_factory.mktemp("runs") / "tiny-ft"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("task") / "toy"
    path.mkdir()
    _rows(16, 0).to_csv(path / "train.csv", index=False)
    _rows(6, 1).to_csv(path / "val.csv", index=False)
    test = _rows(7, 2)
    test.loc[3, "cif"] = "data_broken\n_cell_length_a x\n"  # skipped and counted
    test.loc[5, "heat"] = np.nan
    test.to_csv(path / "test.csv", index=False)
    return path


@pytest.fixture(autouse=True)
def _text_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CRYSTEXT_CACHE", str(tmp_path_factory.getbasetemp() / "text-cache"))


def _ft(run_dir, task_dir, out, mode, **kw):
    kw = {"target": "heat", "epochs": 2, "batch_size": 8, "precision": "float32", "progress": False, **kw}
    return finetune(run_dir, task_dir, out, mode=mode, **kw)


@pytest.fixture(scope="module")
def trained(run_dir, task_dir, tmp_path_factory):
    import os

    os.environ.setdefault("CRYSTEXT_CACHE", str(tmp_path_factory.getbasetemp() / "text-cache"))
    out = tmp_path_factory.mktemp("ft") / "toy-lora"
    summary = _ft(run_dir, task_dir, out, "lora")
    return out, summary


def test_saved_folder_is_a_native_regression_model(trained):
    out, summary = trained
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out)
    assert type(model).__name__ == "GPT2ForSequenceClassification"
    cfg = model.config
    assert cfg.num_labels == 1 and cfg.problem_type == "regression" and cfg.pad_token_id == 0
    assert cfg.pad_token_id != cfg.eos_token_id  # the last non-pad token is <eos>
    target = cfg.crystext_target
    assert target["name"] == "heat" and target["std"] > 0
    assert not [k for k in model.state_dict() if "lora" in k]  # merged: a plain GPT-2 checkpoint
    assert summary["status"] == "done" and summary["rows"] == {"train": 16, "val": 6, "test": 5}
    assert summary["skipped"] == {"test:missing_target": 1, "test:CIFParseError": 1}
    from crystext.atomic import read_skipped  # the converted-but-skipped row is listed, not just counted

    listed = read_skipped(out / summary["skipped_file"])
    assert [(r["id"], r["source"], r["reason"]) for r in listed] == [("test:row 5", "test.csv", "missing_target"),
                                                                      ("test:row 3", "test.csv", "CIFParseError")]
    card = (out / "README.md").read_text()
    assert "GPT2ForSequenceClassification" in card and f"{summary['test']['mae']:.4g}" in card
    assert json.loads((out / "eval.json").read_text())["test"]["n"] == 5
    assert (out / "log.csv").is_file() and (out / "training_config.json").is_file()


def test_settings_are_saved_with_the_run_and_the_flags_are_their_other_face(trained, run_dir, task_dir, tmp_path):
    import argparse

    from crystext.finetune_config import FinetuneSettings

    out, summary = trained
    saved = FinetuneSettings.from_run(out)
    assert saved.fingerprint() == summary["fingerprint"]
    assert (saved.mode, saved.target, saved.epochs, saved.batch_size) == ("lora", "heat", 2, 8)
    assert saved.lr == 1e-3 and saved.patience == 4 and saved.data == str(task_dir.resolve())  # resolved
    parser = argparse.ArgumentParser()
    FinetuneSettings.add_arguments(parser)
    args = parser.parse_args([str(run_dir), "--data", str(task_dir), "--target", "heat", "--epochs", "2",
                              "--batch-size", "8", "--precision", "float32", "--no-progress"])
    from_flags = FinetuneSettings.from_args(args)
    assert from_flags == FinetuneSettings(run=run_dir, data=task_dir, target="heat", epochs=2, batch_size=8,
                                          precision="float32", progress=False)
    # the CLI face, run in the trained folder's place, finds it complete: the same settings
    again = run_finetune(from_flags, out)
    assert again["test"] == summary["test"]
    with pytest.raises(DataNotFoundError, match="no fine-tuning settings"):
        FinetuneSettings.from_run(tmp_path)


def test_pipeline_predicts_in_target_units_and_matches_predict(trained, task_dir):
    out, summary = trained
    pipe = transformers.pipeline(PROPERTY_TASK, model=str(out), device="cpu")
    test = pd.read_csv(task_dir / "test.csv").drop(index=[3, 5])
    preds = pd.read_csv(out / "test_predictions.csv")
    got = pipe(test.cif.tolist(), batch_size=3)
    assert [g["target"] for g in got] == ["heat"] * len(test)
    values = np.array([g["value"] for g in got])
    np.testing.assert_allclose(values, preds.prediction.to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(values, predict(out, test.cif.tolist()), rtol=1e-5)
    assert np.abs(values - test.heat.to_numpy()).mean() == pytest.approx(summary["test"]["mae"], rel=1e-5)
    # the raw output is standardised: the model alone gives (value - mean) / std
    model, tok = pipe.model, pipe.tokenizer
    from crystext.text import structure_to_text

    ids = torch.tensor([tok(structure_to_text(test.cif.iloc[0]))["input_ids"]])
    with torch.no_grad():
        z = float(model(input_ids=ids).logits[0, 0])
    t = model.config.crystext_target
    assert z * t["std"] + t["mean"] == pytest.approx(values[0], rel=1e-5)


def test_pipeline_skips_bad_items_with_a_warning(trained):
    out, _ = trained
    pipe = transformers.pipeline(PROPERTY_TASK, model=str(out), device="cpu")
    good = rocksalt("Na", "Cl", 5.6)
    with pytest.warns(UserWarning, match="input 1"):
        got = pipe([good, "data_x\n_cell_length_a 3\n_cell_length_b q\n", good], batch_size=2, errors="skip")
    assert got[1] is None and got[0]["value"] == pytest.approx(got[2]["value"])


@pytest.mark.parametrize("mode", ["head", "full"])
def test_modes_train_what_they_should(run_dir, task_dir, tmp_path, mode):
    from crystext.finetune import load_for_regression

    summary = _ft(run_dir, task_dir, tmp_path / mode, mode)
    base, _ = load_for_regression(run_dir)
    tuned = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / mode)
    same = torch.equal(base.transformer.h[0].attn.c_attn.weight, tuned.transformer.h[0].attn.c_attn.weight)
    assert same == (mode == "head")
    assert np.isfinite(summary["test"]["mae"])
    if mode == "head":  # the score head only
        assert summary["trainable_parameters"] == base.config.n_embd


def test_head_mode_reuses_cached_eos_states_of_the_same_weights(run_dir, task_dir, tmp_path):
    from crystext.finetune import EosCache, _eos_states, load_for_regression

    cache = tmp_path / "eos"
    fresh = _ft(run_dir, task_dir, tmp_path / "a", "head", eos_cache=False)
    first = _ft(run_dir, task_dir, tmp_path / "b", "head", eos_cache=cache)
    again = _ft(run_dir, task_dir, tmp_path / "c", "head", eos_cache=cache)
    assert first["test"]["mae"] == pytest.approx(fresh["test"]["mae"], rel=1e-5)
    assert again["test"] == first["test"]
    (folder,) = cache.iterdir()  # one folder for these weights and this precision
    assert folder.name.endswith("-float32")
    # the cache returns each document's own state, in the order asked, whatever was cached before
    model, tok = load_for_regression(run_dir)
    ids = [tok.encode("data_NaCl")[:k] for k in (3, 5, 4)]
    got = EosCache(folder).states(model, ids[::-1], tok.pad_token_id, 2, "float32")
    want = _eos_states(model, ids[::-1], tok.pad_token_id, 2, "float32")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # other weights get another folder
    other = tmp_path / "other"
    model.save_pretrained(other)
    (other / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes() + b" ")
    assert EosCache.for_run(other, "float32", root=cache).dir != folder
    assert EosCache.for_run("someone/hub-model", "float32", root=cache) is None


def test_resume_continues_to_the_same_weights(run_dir, task_dir, tmp_path):
    whole = _ft(run_dir, task_dir, tmp_path / "whole", "full", epochs=3, patience=5)
    paused = _ft(run_dir, task_dir, tmp_path / "cut", "full", epochs=3, patience=5, stop_after=1)
    assert paused["status"] == "paused" and (tmp_path / "cut" / "checkpoints" / "state.json").is_file()
    resumed = _ft(run_dir, task_dir, tmp_path / "cut", "full", epochs=3, patience=5)
    assert resumed["status"] == "done" and resumed["epochs_run"] == 3
    assert resumed["test"]["mae"] == pytest.approx(whole["test"]["mae"], rel=1e-5)
    a = pd.read_csv(tmp_path / "whole" / "log.csv")
    b = pd.read_csv(tmp_path / "cut" / "log.csv")
    np.testing.assert_allclose(a.val_mae, b.val_mae, rtol=1e-5)
    # the same command once more: nothing to do
    assert _ft(run_dir, task_dir, tmp_path / "cut", "full", epochs=3, patience=5)["test"] == resumed["test"]
    with pytest.raises(ConfigError, match="other settings"):
        _ft(run_dir, task_dir, tmp_path / "cut", "full", epochs=3, patience=5, lr=0.5, stop_after=0)
    # another epoch budget is another run (its schedule differs): never "complete" from this folder
    with pytest.raises(ConfigError, match="other settings"):
        _ft(run_dir, task_dir, tmp_path / "cut", "full", epochs=6, patience=5, stop_after=0)


def test_lm_branch_features(trained, task_dir):
    out, _ = trained
    cifs = pd.read_csv(task_dir / "val.csv").cif.tolist()[:4]
    feats = finetuned_features(out, cifs, batch_size=3)
    d = transformers.AutoConfig.from_pretrained(out).n_embd
    assert feats.shape == (4, d) and feats.dtype == np.float32
    with_pred = finetuned_features(out, cifs, with_prediction=True)
    np.testing.assert_allclose(with_pred[:, :d], feats, atol=1e-5)
    np.testing.assert_allclose(with_pred[:, d], predict(out, cifs), rtol=1e-4)
    # mean pooling: the fine-tuned transformer's states averaged as for a pretrained run
    from crystext.embeddings import structure_embeddings
    from crystext.finetune import load_finetuned

    model, tok, _ = load_finetuned(out)
    mean = finetuned_features(out, cifs, pooling="mean", with_prediction=True)
    np.testing.assert_allclose(mean[:, :d], structure_embeddings(cifs, (model, tok), pooling="mean"), atol=1e-5)
    np.testing.assert_allclose(mean[:, d], with_pred[:, d], rtol=1e-5)
    assert not np.allclose(mean[:, :d], feats, atol=1e-3)
    with pytest.raises(ConfigError, match="pooling must be"):
        finetuned_features(out, cifs, pooling="max")


def test_task_folder_layouts_and_errors(tmp_path, task_dir):
    cdvae = tmp_path / "perov_like"
    cdvae.mkdir()
    _rows(20, 3).to_csv(cdvae / "val.csv", index=False)
    _rows(5, 4).to_csv(cdvae / "test.csv", index=False)
    task = load_task(cdvae, target="heat")
    assert len(task.splits["train"]) + len(task.splits["val"]) == 20  # val.csv is the training split
    assert "val.csv is the training split" in task.notes[0]
    folds = tmp_path / "folds"
    folds.mkdir()
    for k in range(2):
        _rows(10, 5 + k).to_csv(folds / f"train{k}.csv", index=False)
        _rows(3, 9 + k).to_csv(folds / f"test{k}.csv", index=False)
    task = load_task(folds, target="heat", fold=1)
    assert len(task.splits["test"]) == 3 and len(task.splits["train"]) + len(task.splits["val"]) == 10
    with pytest.raises(DataNotFoundError, match="--fold"):
        load_task(folds, target="heat")
    with pytest.raises(DataNotFoundError, match=r"train.csv: no column 'target'"):
        load_task(task_dir)
    with pytest.raises(DataNotFoundError, match="expected train.csv"):
        load_task(tmp_path / "perov_like", target="heat", train_split="train")
    with pytest.raises(DataNotFoundError, match="no such folder"):
        load_task(tmp_path / "nowhere")


def test_fine_tuning_and_the_benchmark_read_a_task_to_the_same_rows(tmp_path):
    from crystext.tasks import discover_tasks, load_splits

    folder = tmp_path / "toy_folds"
    folder.mkdir()
    for k in range(2):
        _rows(20, 20 + k).rename(columns={"heat": "target"}).to_csv(folder / f"train{k}.csv", index=False)
        _rows(6, 30 + k).rename(columns={"heat": "target"}).to_csv(folder / f"test{k}.csv", index=False)
    tasks = discover_tasks(tmp_path)
    assert [t.name for t in tasks] == ["toy_folds/fold0", "toy_folds/fold1"]
    for task in tasks:
        bench = load_splits(task, max_train=10)
        tuned = load_task(folder, fold=task.fold, max_train=10)
        assert tuned.name == task.name
        for split in ("train", "val", "test"):  # the carved validation rows and the subsample alike
            assert tuned.splits[split]["row"].tolist() == bench[split].rows.tolist()


def test_too_long_structures_are_counted_not_truncated(run_dir, task_dir, tmp_path):
    from crystext.finetune import TextCache, encode_split, load_for_regression

    model, tok = load_for_regression(run_dir)
    df = load_task(task_dir, target="heat").splits["val"]
    ids, y, rows, skipped, examples = encode_split(df, tok, 40, TextCache(tmp_path / "c.jsonl"), progress=False)
    assert skipped["too_long"] == len(df) and not ids and "longer than the model's context of 40" in examples[0]
    ids, y, rows, skipped, _ = encode_split(df, tok, 1024, TextCache(tmp_path / "c.jsonl"), progress=False)
    assert len(ids) == len(df) and not skipped and all(i[-1] == tok.eos_token_id for i in ids)


def test_cli(run_dir, task_dir, tmp_path, capsys):
    from crystext.cli import main

    code = main(["finetune", str(run_dir), "--data", str(task_dir), "--target", "heat", "--mode", "head",
                 "--out", str(tmp_path / "cli"), "--epochs", "3", "--precision", "float32", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "test MAE" in printed and "skipped test:CIFParseError 1" in printed
    assert main(["finetune", str(run_dir), "--data", str(task_dir), "--mode", "head", "--out",
                 str(tmp_path / "cli2"), "--no-progress"]) == 2
    assert "no column 'target'" in capsys.readouterr().err


def test_a_finetuned_folder_is_the_lm_branch_of_the_heads(trained, task_dir):
    from crystext.heads import BranchFeaturizer

    out, _ = trained
    cifs = pd.read_csv(task_dir / "val.csv").cif.tolist()[:4]
    inputs = BranchFeaturizer(branches=("lm", "composition"), run=str(out)).fit(cifs).transform(cifs)
    d = transformers.AutoConfig.from_pretrained(out).n_embd
    assert inputs.features["lm"].shape == (4, d + 1)  # mean-pooled states and the fine-tuned prediction
    np.testing.assert_allclose(inputs.features["lm"], finetuned_features(out, cifs, pooling="mean", with_prediction=True),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(inputs.features["lm"][:, d], predict(out, cifs), rtol=1e-4)


def test_a_finetuned_folder_exports_for_the_hub_with_its_task_card(trained, tmp_path):
    """The Hub export of a fine-tuned folder keeps its task card (named by the repo id) and
    predictions, loads back offline as a regression model with the crystal-property pipeline,
    and refuses pretraining benchmark tables."""
    from crystext.hub import export_for_hub

    out, summary = trained
    folder = export_for_hub(out, tmp_path / "export", "someone/toy-heat")
    card = (folder / "README.md").read_text()
    assert "someone/toy-heat" in card and "pipeline_tag: tabular-regression" in card
    assert f"{summary['test']['mae']:.4g}" in card and "element_embeddings" not in card
    assert (folder / "test_predictions.csv").is_file() and not (folder / "element_embeddings.csv").exists()
    assert not (folder / "checkpoints").exists()
    with pytest.raises(ConfigError, match="fine-tuned folder's card carries its own task metrics"):
        export_for_hub(out, tmp_path / "export2", "someone/toy-heat", benchmark=tmp_path)
