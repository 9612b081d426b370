"""benchmarks/finetune: the report picks on validation only, and run.py resumes only like-for-like rows."""

from __future__ import annotations

import csv

import pandas as pd
import pytest

@pytest.fixture(scope="module")
def report(benchmark_script):
    return benchmark_script("finetune/report.py")


@pytest.fixture(scope="module")
def runner(benchmark_script):
    return benchmark_script("finetune/run.py")


def _row(mode, seed, lr, mae, val, fold=None, run="m"):
    return {"run": run, "task": "t", "fold": fold, "mode": mode, "seed": seed, "lr": lr, "mae": mae,
            "val_mae": val, "epochs": 6, "best_epoch": 5, "s_per_epoch": 10.0, "feature_s": 0.0,
            "n_train": 100, "n_test": 50}


def test_learning_rate_is_picked_on_validation_not_test(report):
    rows = [_row("full", 0, 1e-4, mae=0.10, val=0.30),  # best test, worse validation
            _row("full", 0, 2e-4, mae=0.20, val=0.20),
            _row("full", 1, 2e-4, mae=0.22, val=0.21), _row("full", 2, 2e-4, mae=0.24, val=0.22)]
    s = report.summarise(pd.DataFrame(rows))
    assert list(s["lr"]) == ["0.0002"] and s["seeds"].iloc[0] == 3
    assert s["test_mae"].iloc[0] == pytest.approx(0.22) and s["test_std"].iloc[0] == pytest.approx(0.02)


def test_runs_of_another_epoch_budget_are_not_mixed(report):
    short = [dict(_row("full", seed, 1e-4, mae=0.3, val=0.3), max_epochs=6) for seed in (0, 1, 2)]
    long = [dict(_row("full", seed, 1e-4, mae=0.2, val=0.2), max_epochs=30) for seed in (0, 1, 2)]
    s = report.summarise(pd.DataFrame(short + long))
    assert len(s) == 2 and sorted(s["test_mae"]) == pytest.approx([0.2, 0.3])


def test_fold_tasks_average_folds_per_seed_and_pick_per_fold(report):
    rows = []
    for fold, (good, bad) in enumerate([(1e-4, 2e-4), (2e-4, 1e-4)]):
        rows += [_row("lora", 0, good, mae=0.1 * (fold + 1), val=0.1, fold=fold),
                 _row("lora", 0, bad, mae=9.0, val=0.5, fold=fold),
                 _row("lora", 1, good, mae=0.1 * (fold + 1) + 0.02, val=0.1, fold=fold)]
    s = report.summarise(pd.DataFrame(rows)).iloc[0]
    assert s["folds"] == 2 and s["seeds"] == 2
    assert s["test_mae"] == pytest.approx((0.15 + 0.17) / 2)


def test_verdict_calls_a_gap_inside_the_spread_a_tie(report):
    s = pd.DataFrame([{"run": "m", "task": "t", "mode": "full", "lr": "1e-4", "seeds": 3, "test_mae": 0.200,
                       "test_std": 0.010, "val_mae": 0.2}])
    base = pd.DataFrame([{"task": "t", "baseline": "frozen LM + MLP", "test_mae": 0.205, "test_std": 0.004, "seeds": 3},
                         {"task": "t", "baseline": "Magpie + MLP", "test_mae": 0.400, "test_std": 0.004, "seeds": 3}])
    assert report.verdicts(s, base)[0].count("no verdict yet") == 1  # head and lora not run
    s = pd.concat([s.assign(mode=m, val_mae=0.3) for m in ("head", "lora")] + [s], ignore_index=True)
    (line,) = report.verdicts(s, base)
    assert "best mode on validation **full**" in line and "no verdict" not in line
    assert "ties frozen LM + MLP" in line and "target of -30 % not met" in line
    assert "beats Magpie + MLP" in line


def test_run_skips_only_rows_of_the_same_run_and_budget(runner, tmp_path, monkeypatch):
    results = tmp_path / "results.csv"
    # a smoke row of another budget, written in the older layout (no cap columns)
    with open(results, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[f for f in runner.FIELDS if not f.startswith("max_")])
        w.writeheader()
        w.writerow({"task": "perov_5", "fold": "", "mode": "head", "seed": 0, "lr": "0.003", "mae": 1.0,
                    "val_mae": 1.0, "run": "crystext-mp"})
    calls = []

    def fake_finetune(run, data, out, mode, seed, lr, **kw):
        calls.append((mode, seed, lr, kw["max_train"]))
        return {"test": {"mae": 0.5, "rmse": 0.6, "r2": 0.1}, "val": {"mae": 0.4 + lr}, "best_epoch": 1,
                "epochs_run": 1, "s_per_epoch": 1.0, "feature_s": 0.0, "train_s": 1.0,
                "rows": {"train": 10, "val": 5, "test": 5}, "skipped": {}, "precision": "float32"}

    import crystext.finetune
    monkeypatch.setattr(crystext.finetune, "finetune", fake_finetune)
    args = ["--run", "models/crystext-mp", "--tasks", "perov_5", "--modes", "head", "--seeds", "0", "1",
            "--data", str(tmp_path), "--out", str(tmp_path / "out"), "--results", str(results), "--max-train", "50"]
    runner.main(args)
    assert len(calls) == 4  # the capped run redoes lr 0.003: the old row was uncapped
    assert [c[2] for c in calls[3:]] == [1e-3]  # seed 1 reruns the lr picked on validation
    got = pd.read_csv(results)
    assert list(got.columns) == runner.FIELDS and len(got) == 5 and got["max_train"].iloc[-1] == 50
    runner.main(args)  # everything finished: nothing reruns
    assert len(calls) == 4


def test_run_redoes_rows_of_other_weights_under_the_same_name(runner, report, tmp_path, monkeypatch):
    """A retrained release keeps its folder name: its rows, folders and report label are its own."""
    model = tmp_path / "crystext-mp"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"release 1")
    calls = []

    def fake_finetune(run, data, out, mode, seed, lr, **kw):
        calls.append(out)
        return {"test": {"mae": 0.5, "rmse": 0.6, "r2": 0.1}, "val": {"mae": 0.4 + lr}, "best_epoch": 1,
                "epochs_run": 1, "s_per_epoch": 1.0, "feature_s": 0.0, "train_s": 1.0,
                "rows": {"train": 10, "val": 5, "test": 5}, "skipped": {}, "precision": "float32"}

    import crystext.finetune
    monkeypatch.setattr(crystext.finetune, "finetune", fake_finetune)
    results = tmp_path / "results.csv"
    args = ["--run", str(model), "--tasks", "perov_5", "--modes", "head", "--seeds", "0", "1",
            "--data", str(tmp_path), "--out", str(tmp_path / "out"), "--results", str(results)]
    runner.main(args)
    runner.main(args)
    assert len(calls) == 4  # the same weights: nothing reruns
    (model / "model.safetensors").write_bytes(b"release 2")
    runner.main(args)
    assert len(calls) == 8 and not set(calls[:4]) & set(calls[4:])  # new rows, new folders
    got = pd.read_csv(results, dtype={"run_sha": str})
    assert got["run_sha"].nunique() == 2 and set(got["run"]) == {"crystext-mp"}
    labels = set(report.summarise(got)["run"])
    assert len(labels) == 2 and all(label.startswith("crystext-mp@") for label in labels)
