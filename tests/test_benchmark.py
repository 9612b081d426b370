"""Benchmark (crystext.benchmark, ``crystext benchmark``): protocol on a task with a known answer,
determinism, missing-element handling and coverage, Matbench-style folds, output layout, CLI.

Everything runs on tiny synthetic tasks written to ``tmp_path`` whose target is an exact function
of composition: the fractional mean of a per-element number. An element table holding that number
solves the task exactly with ridge on mean pooling; a random 3-d table cannot.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crystext.benchmark import RESULT_COLUMNS, run_benchmark
from crystext.cli import main
from crystext.tasks import discover_tasks, load_splits

ELEMENTS = ["Li", "Na", "K", "Mg", "Ca", "Sr", "Ti", "Zr", "Fe", "Co", "Ni", "Zn",
            "Al", "Ga", "Si", "Ge", "O", "S", "Se", "N", "P", "F", "Cl", "Br"]
#: the per-element number the target averages (Cu included, used by the missing-element test)
VALUE = dict(zip(ELEMENTS + ["Cu"], np.random.default_rng(0).uniform(0.0, 10.0, len(ELEMENTS) + 1).round(4)))

# the quick, cheap settings shared by most runs
FAST = dict(baselines=[], quick=True, regressors=("ridge", "hgb"), poolings=("mean",), plots=False, progress=False)


def informative_table(elements=tuple(VALUE)) -> pd.DataFrame:
    """Column 0 is the number the target averages; column 1 an unrelated integer."""
    return pd.DataFrame({"v": [VALUE[e] for e in elements], "w": [(7 * i) % 5 for i in range(len(elements))]},
                        index=list(elements))


def random_table(elements=tuple(ELEMENTS)) -> pd.DataFrame:
    return pd.DataFrame(np.random.default_rng(1).normal(size=(len(elements), 3)), index=list(elements))


def make_rows(n: int, seed: int, elements=ELEMENTS) -> pd.DataFrame:
    """``n`` binary/ternary formulas over ``elements``; target = fractional mean of VALUE."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        k = int(rng.integers(2, 4))
        els = rng.choice(list(elements), k, replace=False)
        amounts = rng.integers(1, 5, k)
        formula = "".join(f"{e}{a}" for e, a in zip(els, amounts))
        rows.append((formula, float(np.dot([VALUE[e] for e in els], amounts) / amounts.sum())))
    return pd.DataFrame(rows, columns=["formula", "target"])


def write_task(folder: Path, splits: dict[str, pd.DataFrame]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in splits.items():
        df.to_csv(folder / f"{name}.csv", index=False)
    return folder


def toy_splits(seed: int = 0, n=(160, 40, 60)) -> dict[str, pd.DataFrame]:
    return {s: make_rows(k, seed * 10 + i) for i, (s, k) in enumerate(zip(("train", "val", "test"), n))}


@pytest.fixture
def toy(tmp_path) -> Path:
    """A data root holding one composition task ``toy/{train,val,test}.csv``."""
    write_task(tmp_path / "data" / "toy", toy_splits())
    return tmp_path / "data"


def maes(results: pd.DataFrame) -> dict[tuple, float]:
    return {(r.task, r.representation, r.pooling, r.regressor, r.seed): r.value for r in results.itertuples()}


# --------------------------------------------------------------------------- protocol


def test_protocol_recovers_a_known_answer_and_random_vectors_do_not(toy, tmp_path):
    res = run_benchmark(data=toy, out=None, tables={"informative": informative_table(), "random": random_table()},
                        **FAST)
    got = maes(res.results)
    std = float(pd.read_csv(toy / "toy" / "test.csv")["target"].std())
    informative = got[("toy", "informative", "mean", "ridge", 0)]
    random = got[("toy", "random", "mean", "ridge", 0)]
    # the target is column 0 of the informative mean-pooled features: ridge is (almost) exact
    assert informative < 0.01 * std
    # three random dimensions cannot express a function of 24 element fractions
    assert random > 0.3 * std
    assert random > 100 * informative
    # HGB is not exact but the informative set still wins clearly
    assert got[("toy", "informative", "mean", "hgb", 0)] < 0.5 * got[("toy", "random", "mean", "hgb", 0)]
    # the fit info records the tuned alpha and validation MAE
    assert len(res.fits) == int((res.results["metric"] == "mae").sum())
    assert res.fits["fit_info"].str.contains("val_mae").all()


def test_validation_split_only_tunes_test_split_only_scores(toy, tmp_path):
    """Shifting the test targets changes the reported MAE but nothing that was fitted or tuned
    (chosen alpha, HGB iterations, validation MAE): the test split is only scored."""
    tables = {"informative": informative_table(), "random": random_table()}
    base = run_benchmark(data=toy, out=None, tables=tables, **FAST)
    test = pd.read_csv(toy / "toy" / "test.csv")
    test["target"] += 100.0
    test.to_csv(toy / "toy" / "test.csv", index=False)
    shifted = run_benchmark(data=toy, out=None, tables=tables, **FAST)
    assert list(shifted.fits["fit_info"]) == list(base.fits["fit_info"])
    test_rows = base.results["metric"] == "mae"
    assert (shifted.results["value"][test_rows] > base.results["value"][test_rows] + 50).all()
    # validation MAEs, and so the settings picked on them, do not move
    assert (shifted.results["value"][~test_rows] == base.results["value"][~test_rows]).all()
    cols = ["task", "representation", "pooling", "regressor", "val_mae"]
    key = lambda df: df[cols].sort_values("representation").reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(key(shifted.selected), key(base.selected))


# --------------------------------------------------------------------------- determinism


def test_two_runs_write_identical_results(toy, tmp_path):
    kwargs = dict(FAST, regressors=("ridge", "hgb", "mlp"), poolings=("mean", "stats4"), seeds=(0, 1))
    tables = {"informative": informative_table(), "random": random_table()}
    a = run_benchmark(data=toy, out=tmp_path / "a", tables=tables, **kwargs)
    b = run_benchmark(data=toy, out=tmp_path / "b", tables=tables, **kwargs)
    text_a = (tmp_path / "a" / "results.csv").read_text()
    assert text_a == (tmp_path / "b" / "results.csv").read_text()
    pd.testing.assert_frame_equal(a.results, b.results)
    # 2 sets x 2 poolings x (ridge + hgb once, mlp per seed) x (test, validation MAE)
    assert len(a.results) == 2 * 2 * (1 + 1 + 2) * 2
    mlp = a.results[(a.results["regressor"] == "mlp") & (a.results["metric"] == "mae")]
    assert sorted(set(mlp["seed"])) == [0, 1]
    assert set(a.results.loc[a.results["regressor"] != "mlp", "seed"]) == {0}
    assert np.isfinite(a.results["value"]).all()
    # the seed matters to the MLP only: its two seeds give different numbers
    by_seed = mlp.pivot_table(index=["representation", "pooling"], columns="seed", values="value")
    assert (by_seed[0] != by_seed[1]).any()
    # the file round-trips to the in-memory table (6 significant digits)
    back = pd.read_csv(tmp_path / "a" / "results.csv")
    np.testing.assert_allclose(back["value"], a.results["value"], rtol=1e-5)
    # the per-row test errors of the picked settings come back from disk and give the same ranks
    from crystext.benchmark.selection import ERRORS_FILE, errors_from_table, selected_settings

    assert (tmp_path / "a" / ERRORS_FILE).read_bytes() == (tmp_path / "b" / ERRORS_FILE).read_bytes()
    table = pd.read_csv(tmp_path / "a" / ERRORS_FILE)
    assert set(table.groupby("representation")["seed"].nunique()) <= {1, 2} and (table["abs_error"] >= 0).all()
    n_boot = json.loads((tmp_path / "a" / "run_info.json").read_text())["n_boot"]
    again = selected_settings(back, errors_from_table(table), n_boot=n_boot)
    cols = ["task", "representation", "pooling", "regressor", "rank", "tied_with_best"]
    pd.testing.assert_frame_equal(again[cols], a.selected[cols])
    np.testing.assert_allclose(again["diff_lo"], a.selected["diff_lo"], rtol=1e-5, atol=1e-9)


def test_mlp_seeds_trained_together_equal_each_seed_alone():
    """The MLP's seeds share one stacked model but not gradients, batch order or early stopping:
    seed 1 of (0, 1, 2) gives what seed 1 trained alone gives (float rounding aside)."""
    import dataclasses

    from crystext.benchmark import ProtocolConfig, fit_predict, fit_predict_seeds

    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6))
    y = np.sin(x[:, 0]) + x[:, 1] ** 2
    cfg = dataclasses.replace(ProtocolConfig(), mlp_hidden=(16,), mlp_max_epochs=6, mlp_batch_size=64)
    together = fit_predict_seeds("mlp", x[:300], y[:300], x[300:400], y[300:400], x[400:], (0, 1, 2), cfg)
    alone = fit_predict("mlp", x[:300], y[:300], x[300:400], y[300:400], x[400:], 1, cfg)
    np.testing.assert_allclose(together[1][0], alone[0], rtol=1e-4, atol=1e-5)
    assert together[1][1]["epochs"] == alone[1]["epochs"]
    assert not np.allclose(together[0][0], together[1][0])  # the seeds differ
    # a seed that stops early (patience 1) keeps its best epoch while the others go on
    short = dataclasses.replace(cfg, mlp_patience=1, mlp_max_epochs=40)
    both = fit_predict_seeds("mlp", x[:300], y[:300], x[300:400], y[300:400], x[400:], (0, 1), short)
    for seed, (pred, info) in zip((0, 1), both):
        solo_pred, solo_info = fit_predict("mlp", x[:300], y[:300], x[300:400], y[300:400], x[400:], seed, short)
        assert info["epochs"] == solo_info["epochs"]
        np.testing.assert_allclose(pred, solo_pred, rtol=1e-3, atol=1e-4)


def test_the_mlp_optimizer_is_torch_adamw_up_to_rounding():
    """The protocol's written-out AdamW (kept so committed results reproduce to the digit) takes the
    steps ``torch.optim.AdamW`` takes, float rounding aside."""
    import torch

    from crystext.benchmark.protocol import _StackedAdamW

    gen = torch.Generator().manual_seed(0)
    ours = [torch.randn(3, 5, 4, generator=gen), torch.randn(3, 1, 4, generator=gen)]
    theirs = [t.clone().requires_grad_() for t in ours]
    opt, reference = _StackedAdamW(ours, lr=1e-2, weight_decay=1e-2), torch.optim.AdamW(theirs, lr=1e-2, weight_decay=1e-2)
    for _ in range(20):
        grads = [torch.randn(t.shape, generator=gen) for t in ours]
        opt.step(ours, grads)
        for t, g in zip(theirs, grads):
            t.grad = g.clone()
        reference.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)


class SessionEnded(Exception):
    pass


def test_a_stopped_benchmark_resumes_from_the_tasks_it_finished(tmp_path, monkeypatch):
    import crystext.benchmark.runner as runner

    data = tmp_path / "data"
    for i, name in enumerate(("a_task", "b_task")):
        write_task(data / name, toy_splits(seed=i))
    tables = {"informative": informative_table()}
    kwargs = dict(FAST, tables=tables, cache_dir=tmp_path / "cache")
    whole = run_benchmark(data=data, out=None, **kwargs).results
    real, calls = runner._benchmark_task, []

    def stops_at_b(task, *args):
        calls.append(task.name)
        if task.name == "b_task":
            raise SessionEnded  # the session ends here
        return real(task, *args)

    def counts(task, *args):
        calls.append(task.name)
        return real(task, *args)

    monkeypatch.setattr(runner, "_benchmark_task", stops_at_b)
    with pytest.raises(SessionEnded):
        run_benchmark(data=data, out=tmp_path / "out", **kwargs)
    assert not (tmp_path / "out" / "results.csv").exists() and (tmp_path / "out" / ".partial").is_dir()
    calls.clear()
    monkeypatch.setattr(runner, "_benchmark_task", counts)
    resumed = run_benchmark(data=data, out=tmp_path / "out", **dict(kwargs, progress=True))
    assert calls == ["b_task"]  # a_task read back, not refitted
    pd.testing.assert_frame_equal(resumed.results, whole)
    assert not (tmp_path / "out" / ".partial").exists()  # cleared once the outputs are written
    # a changed setting does not read back the other run's tasks
    monkeypatch.setattr(runner, "_benchmark_task", stops_at_b)
    with pytest.raises(SessionEnded):
        run_benchmark(data=data, out=tmp_path / "out2", **kwargs)
    calls.clear()
    monkeypatch.setattr(runner, "_benchmark_task", counts)
    run_benchmark(data=data, out=tmp_path / "out2", **dict(kwargs, regressors=("ridge",)))
    assert calls == ["a_task", "b_task"]


def test_benchmark_cache_follows_the_one_cache_setting(tmp_path, monkeypatch):
    from crystext.benchmark import BenchmarkSettings

    monkeypatch.setenv("CRYSTEXT_CACHE", str(tmp_path))
    assert BenchmarkSettings().resolved()[0].cache_dir == tmp_path / "benchmark"
    monkeypatch.setenv("CRYSTEXT_CACHE", "")  # empty means unset, as everywhere else
    assert BenchmarkSettings().resolved()[0].cache_dir == Path.home() / ".cache" / "crystext" / "benchmark"


def test_settings_object_and_keywords_run_the_same_benchmark(toy):
    from crystext.benchmark import BenchmarkSettings
    from crystext.errors import ConfigError

    tables = {"informative": informative_table()}
    settings = BenchmarkSettings(**dict(FAST, regressors=("ridge",)), tables=tables)
    by_settings = run_benchmark(data=toy, out=None, settings=settings, max_train=80)
    by_keywords = run_benchmark(data=toy, out=None, tables=tables, **dict(FAST, regressors=("ridge",), max_train=80))
    pd.testing.assert_frame_equal(by_settings.results, by_keywords.results)
    assert list(by_settings.coverage["rows"])[0] == 80
    resolved, _ = BenchmarkSettings(quick=True, max_test=0).resolved()
    assert resolved.seeds == (0,) and resolved.caps == (300, 100, None) and resolved.n_boot == 200
    assert BenchmarkSettings().resolved()[0].seeds == (0, 1, 2)
    with pytest.raises(TypeError):
        run_benchmark(data=toy, out=None, no_such_option=1)
    with pytest.raises(ConfigError, match="regressor"):
        run_benchmark(data=toy, out=None, tables=tables, **dict(FAST, regressors=("svm",)))


def test_cap_zero_uses_every_row_and_caps_subsample(toy):
    whole = run_benchmark(data=toy, out=None, tables={"informative": informative_table()},
                          **dict(FAST, regressors=("ridge",), max_train=0, max_val=0, max_test=0))
    assert list(whole.coverage["used"]) == [160, 40, 60]
    capped = run_benchmark(data=toy, out=None, tables={"informative": informative_table()},
                           **dict(FAST, regressors=("ridge",), max_train=50, max_val=20, max_test=0))
    assert list(capped.coverage["rows"]) == [50, 20, 60]


def test_lm_precision_is_checked():
    from crystext.benchmark.representations import resolve_precision
    from crystext.errors import ConfigError

    assert resolve_precision("float32") == "float32"
    assert resolve_precision("auto") in ("float32", "bfloat16")
    with pytest.raises(ConfigError, match="precision"):
        resolve_precision("fp8")


# --------------------------------------------------------------------------- missing elements


def test_missing_element_rows_are_dropped_for_every_set_and_counted(tmp_path):
    """Rows with Cu (absent from the random table, present in the informative one) are dropped for
    both sets: the results equal those of the same task with the Cu rows removed beforehand."""
    clean = toy_splits(seed=3)
    n_cu = {"train": 12, "val": 4, "test": 7}
    dirty = {}
    for i, (split, df) in enumerate(clean.items()):
        rng = np.random.default_rng(100 + i)
        partners = rng.choice(ELEMENTS, n_cu[split])
        cu = pd.DataFrame({"formula": [f"Cu1{e}2" for e in partners],
                           "target": [(VALUE["Cu"] + 2 * VALUE[e]) / 3 for e in partners]})
        mixed = pd.concat([df, cu]).sample(frac=1.0, random_state=i).reset_index(drop=True)
        if split == "test":
            mixed = pd.concat([mixed, pd.DataFrame({"formula": ["Qq2"], "target": [1.0]})], ignore_index=True)
        dirty[split] = mixed
        clean[split] = mixed[~mixed["formula"].str.contains("Cu|Qq")].reset_index(drop=True)
    write_task(tmp_path / "dirty" / "toy", dirty)
    write_task(tmp_path / "clean" / "toy", clean)
    tables = {"informative": informative_table(), "random": random_table()}  # random lacks Cu

    res = run_benchmark(data=tmp_path / "dirty", out=tmp_path / "out", tables=tables, **FAST)
    ref = run_benchmark(data=tmp_path / "clean", out=None, tables=tables, **FAST)
    assert set(res.results["representation"]) == {"informative", "random"}
    pd.testing.assert_frame_equal(res.results, ref.results)

    cov = res.coverage.set_index("split")
    for split, n in n_cu.items():
        bad = n + (split == "test")
        assert cov.loc[split, "rows"] == len(dirty[split])
        assert cov.loc[split, "dropped"] == bad
        assert cov.loc[split, "used"] == len(dirty[split]) - bad
        assert f"element missing from a vector set: {n}" in cov.loc[split, "reasons"]
        assert cov.loc[split, "missing_elements"] == f"Cu({n})"
    assert "unparsable formula: 1" in cov.loc["test", "reasons"]
    assert "unparsable" not in cov.loc["train", "reasons"]
    on_disk = pd.read_csv(tmp_path / "out" / "coverage.csv", keep_default_na=False)
    assert list(on_disk["dropped"]) == list(res.coverage["dropped"])
    assert list(on_disk["missing_elements"]) == list(res.coverage["missing_elements"])

    # with the informative set alone nothing lacks Cu: only the unparsable row goes, results change
    alone = run_benchmark(data=tmp_path / "dirty", out=None, tables={"informative": informative_table()}, **FAST)
    assert list(alone.coverage["dropped"]) == [0, 0, 1]  # splits in order train, val, test
    assert list(alone.coverage["split"]) == ["train", "val", "test"]
    both = res.results[res.results["metric"] == "mae"].set_index(["representation", "regressor"])["value"]
    solo = alone.results[alone.results["metric"] == "mae"].set_index(["representation", "regressor"])["value"]
    assert solo[("informative", "hgb")] != both[("informative", "hgb")]


def test_nan_formula_is_sodium_nitride_and_missing_targets_are_skipped(tmp_path):
    """'NaN' in the formula column is a formula (Na N), not a missing value; rows whose target is
    empty or nan are left out of the split."""
    folder = tmp_path / "na"
    folder.mkdir()
    (folder / "train.csv").write_text("formula,target\nNaN,1.5\nFe1O1,\nLi1F1,nan\nK1Cl1,3\nNa1Cl1,2\n")
    (folder / "val.csv").write_text("formula,target\nNaN,1\nK1Br1,2\n")
    (folder / "test.csv").write_text("formula,target\nNaN,1\nLi1Br1,2\n")
    (task,) = discover_tasks(tmp_path)
    splits = load_splits(task)
    assert splits["train"].formulas == ["NaN", "K1Cl1", "Na1Cl1"]
    np.testing.assert_array_equal(splits["train"].y, [1.5, 3.0, 2.0])
    np.testing.assert_array_equal(splits["train"].rows, [0, 3, 4])
    table = informative_table(ELEMENTS)
    res = run_benchmark(data=tmp_path, out=None, tables={"informative": table}, **dict(FAST, regressors=("ridge",)))
    assert list(res.coverage["used"]) == [3, 2, 2] and list(res.coverage["dropped"]) == [2, 0, 0]
    assert list(res.coverage["rows"]) == [5, 2, 2]
    why = res.coverage["reasons"][0]
    assert "missing target: 2" in why and "train.csv row 2: missing target" in why and "train.csv row 3" in why
    assert len(res.results) == 2  # test and validation MAE of the one fit


# --------------------------------------------------------------------------- folds


def test_matbench_folds_are_discovered_and_each_reported(tmp_path):
    data = tmp_path / "data"
    folds = [toy_splits(seed=5, n=(150, 30, 50)), toy_splits(seed=6, n=(140, 35, 45))]
    mb = data / "composition" / "mb"  # two levels down, as in DATA/composition/<task>
    write_task(mb, {"train0": folds[0]["train"], "test0": folds[0]["test"],  # fold 0: no val file
                    "train1": folds[1]["train"], "val1": folds[1]["val"], "test1": folds[1]["test"]})
    write_task(data / "composition" / "toy", toy_splits())

    tasks = discover_tasks(data)
    assert [t.name for t in tasks] == ["mb/fold0", "mb/fold1", "toy"]
    assert [t.fold for t in tasks] == [0, 1, None]
    assert [t.group for t in tasks] == ["mb", "mb", "toy"]
    assert tasks[0].val is None and tasks[1].val == mb / "val1.csv"
    assert tasks[1].train == mb / "train1.csv" and tasks[1].test == mb / "test1.csv"
    assert [t.name for t in discover_tasks(data, ["mb"])] == ["mb/fold0", "mb/fold1"]
    assert [t.name for t in discover_tasks(data / "composition", ["mb/fold1"])] == ["mb/fold1"]

    # fold 0 has no val file: one is carved from its training rows, disjoint from them
    s0 = load_splits(tasks[0])
    assert len(s0["train"]) + len(s0["val"]) == 150 and len(s0["test"]) == 50
    assert 0 < len(s0["val"]) < 150
    assert not set(s0["train"].rows) & set(s0["val"].rows)

    tables = {"informative": informative_table(), "random": random_table()}
    res = run_benchmark(data=data, out=tmp_path / "out", tables=tables, tasks=["mb"],
                        **dict(FAST, plots=True))
    assert sorted(set(res.results["task"])) == ["mb/fold0", "mb/fold1"]
    per_fold = res.results.groupby("task").size()
    assert (per_fold == 2 * 2 * 2).all()  # 2 sets x (ridge, hgb) x (test, validation MAE)
    assert sorted(set(res.coverage["task"])) == ["mb/fold0", "mb/fold1"]
    assert (res.coverage.groupby("task").size() == 3).all()
    by_fold = res.results[res.results["metric"] == "mae"].pivot_table(
        index=["representation", "regressor"], columns="task", values="value")
    assert (by_fold["mb/fold0"] != by_fold["mb/fold1"]).all()  # two folds, two different answers

    # each fold is scored on its own files: the same numbers as the fold's files as plain tasks
    single = tmp_path / "single"
    write_task(single / "f0", {"train": folds[0]["train"], "test": folds[0]["test"]})
    write_task(single / "f1", {"train": folds[1]["train"], "val": folds[1]["val"], "test": folds[1]["test"]})
    plain = run_benchmark(data=single, out=None, tables=tables, **FAST)
    for k in (0, 1):
        got = res.results[res.results["task"] == f"mb/fold{k}"].drop(columns="task").reset_index(drop=True)
        want = plain.results[plain.results["task"] == f"f{k}"].drop(columns="task").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want)

    # the report aggregates the folds under the group name and shows a fold alone
    report = (tmp_path / "out" / "report.md").read_text()
    assert "### mb\n" in report and "### mb/fold" not in report
    assert "±" in report  # mean ± std over the two folds
    assert "Fold `mb/fold0` alone" in report
    assert (tmp_path / "out" / "plots" / "mb.png").is_file()


# --------------------------------------------------------------------------- output layout + CLI


def test_results_layout_and_report(toy, tmp_path):
    tables = {"informative": informative_table(), "random": random_table()}
    res = run_benchmark(data=toy, out=tmp_path / "out", tables=tables,
                        **dict(FAST, poolings=("mean", "stats4"), plots=True))
    out = tmp_path / "out"
    df = pd.read_csv(out / "results.csv")
    assert list(df.columns) == ["task", "representation", "pooling", "regressor", "seed", "metric", "value"]
    assert list(res.results.columns) == RESULT_COLUMNS == list(df.columns)
    assert set(df["metric"]) == {"mae", "val_mae"}
    assert set(df["task"]) == {"toy"}
    assert set(df["representation"]) == {"informative", "random"}
    assert set(df["pooling"]) == {"mean", "stats4"}
    assert set(df["regressor"]) == {"ridge", "hgb"}
    assert set(df["seed"]) == {0}
    assert len(df) == 2 * 2 * 2 * 2 and not df.duplicated(RESULT_COLUMNS[:6]).any()
    assert (df["value"] >= 0).all()
    for name in ("coverage.csv", "intrinsic_similarity.csv", "intrinsic_nn.csv", "run_info.json", "report.md",
                 "plots/toy.png", "plots/similarity_spearman.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    for heading in ("# Embedding benchmark", "## Rank per task", "## Fixed protocol", "### toy",
                    "## Intrinsic element metrics", "## Coverage"):
        assert heading in report, heading
    assert "![toy](plots/toy.png)" in report
    # the setting picked on validation is in bold, and it is informative + ridge
    sel = pd.read_csv(out / "selected.csv").set_index("representation")
    assert sel.loc["informative", "regressor"] == "ridge" and sel.loc["informative", "rank"] == 1
    assert f"**{sel.loc['informative', 'test_mae']:.4g}**" in report
    assert "Wins and ties" in report


def test_cli_benchmark_quick(toy, tmp_path, capsys):
    csv = tmp_path / "informative.csv"
    informative_table().rename_axis("element").to_csv(csv)
    out = tmp_path / "cli-out"
    rc = main(["benchmark", "--data", str(toy), "--out", str(out), "--quick", "--baselines", "magpie",
               "--tables", f"informative={csv}", "--regressors", "ridge", "hgb", "--poolings", "mean",
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    assert "results" in capsys.readouterr().out
    df = pd.read_csv(out / "results.csv")
    assert list(df.columns) == RESULT_COLUMNS
    assert set(df["representation"]) == {"magpie", "informative"}
    assert set(df["metric"]) == {"mae", "val_mae"}
    assert len(df) == 2 * 2 * 2  # 2 sets x (ridge, hgb), mean pooling, test + validation MAE
    assert (out / "report.md").is_file() and (out / "plots" / "toy.png").is_file()
    assert "magpie" in (out / "report.md").read_text()
    ridge = df[(df["regressor"] == "ridge") & (df["metric"] == "mae")].set_index("representation")["value"]
    assert ridge["informative"] < ridge["magpie"]

    # a bad data folder is a clean error (exit code 2), not a traceback
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
    rc = main(["benchmark", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"), "--quick",
               "--baselines", "magpie"])
    assert rc == 2
    assert "not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- our runs


def _tiny_run(path: Path, seed: int) -> Path:
    from crystext.modeling import build_model
    from crystext.tokenization import load_tokenizer

    tok = load_tokenizer("crystext-cif")
    build_model("tiny", tok, seed=seed).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _perovskite_rows(n: int, seed: int) -> pd.DataFrame:
    """Cubic ABX3 perovskites with a target that depends on the lattice (not only composition)."""
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        a_el, b_el = rng.choice(["Sr", "Ba", "Ca", "K"]), rng.choice(["Ti", "Zr", "Nb", "Fe"])
        a = float(rng.uniform(3.7, 4.3))
        s = Structure(Lattice.cubic(a), [a_el, b_el, "O", "O", "O"],
                      [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
        rows.append({"cif": s.to(fmt="cif"), "formula": s.composition.reduced_formula,
                     "heat_all": a - 4.0 + 0.1 * VALUE.get(b_el, 1.0), "dir_gap": float(rng.uniform())})
    return pd.DataFrame(rows)


def test_two_runs_are_benchmarked_and_compared_on_structure_tasks(tmp_path):
    """Our runs enter as element sets everywhere and as structure vectors (every layer/pooling
    view) on structure tasks; the report compares the runs; bf16 and float32 vectors are cached
    apart; a second run reads the cache and gives the same CSV."""
    folder = tmp_path / "data" / "perov_5"
    folder.mkdir(parents=True)
    _perovskite_rows(40, 0).to_csv(folder / "val.csv")
    _perovskite_rows(12, 1).to_csv(folder / "test.csv")
    runs = [f"a={_tiny_run(tmp_path / 'run-a', 0)}", f"b={_tiny_run(tmp_path / 'run-b', 1)}"]
    kwargs = dict(FAST, runs=runs, regressors=("ridge",), structure_layers=("middle", "last"),
                  structure_poolings=("mean", "last"), cache_dir=tmp_path / "cache", lm_precision="float32",
                  structure_baselines=())
    res = run_benchmark(data=tmp_path / "data", out=tmp_path / "out", **kwargs)
    got = res.results
    assert set(got["task"]) == {"perov_5/heat_all", "perov_5/dir_gap"}
    assert set(got["representation"]) == {"crystext-a", "crystext-b"}
    views = {p for p in got["pooling"] if p.startswith("structure-")}
    assert views == {"structure-mean-L1", "structure-mean-L2", "structure-last-L1", "structure-last-L2"}
    assert len(got) == 2 * 2 * (1 + 4) * 2  # tasks x runs x (mean pooling + 4 views) x (test, val)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Our runs compared" in report and "crystext-b structure" in report
    assert "float32 forward pass" in report
    # tiny runs ship no corpus summary: the leakage table says so instead of guessing
    assert set(res.leakage["run"]) == {"crystext-a", "crystext-b"} and set(res.leakage["task"]) == {"perov_5/heat_all", "perov_5/dir_gap"}
    assert res.leakage["corpus"].str.startswith("corpus not available").all()
    assert "## Leakage" in report
    cached = sorted(p.name for p in (tmp_path / "cache").rglob("*.npz"))
    again = run_benchmark(data=tmp_path / "data", out=tmp_path / "out2", **kwargs)
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*.npz")) == cached
    assert (tmp_path / "out" / "results.csv").read_text() == (tmp_path / "out2" / "results.csv").read_text()
    bf16 = run_benchmark(data=tmp_path / "data", out=None, **dict(kwargs, lm_precision="bfloat16"))
    assert any("-bfloat16" in str(p) for p in (tmp_path / "cache").rglob("*.npz"))
    assert len(bf16.results) == len(got)


def test_a_structure_vector_with_the_element_floor_holds_the_composition_beside_the_states(tmp_path):
    """``mean+elements`` reads the same hidden states as ``mean`` (no second forward pass, the same
    cache) and puts the run's composition-pooled element vectors beside them: its feature count is
    the sum, and it is compared as one more setting of the run."""
    folder = tmp_path / "data" / "perov_5"
    folder.mkdir(parents=True)
    _perovskite_rows(40, 0).to_csv(folder / "val.csv")
    _perovskite_rows(12, 1).to_csv(folder / "test.csv")
    run = f"a={_tiny_run(tmp_path / 'run-a', 0)}"
    res = run_benchmark(data=tmp_path / "data", out=None, **dict(
        FAST, runs=[run], regressors=("ridge",), structure_layers=("last",),
        structure_poolings=("mean", "mean+elements"), cache_dir=tmp_path / "cache", lm_precision="float32",
        structure_baselines=(), tasks=["perov_5/heat_all"]))
    views = set(res.results["pooling"])
    assert {"structure-mean-L2", "structure-mean+elements-L2", "mean"} <= views
    width = res.fits.set_index("pooling")["features"]
    assert width["structure-mean+elements-L2"] == width["structure-mean-L2"] + width["mean"]
    cached = list((tmp_path / "cache").rglob("*.npz"))
    assert len(cached) == 1 and not any("elements" in k for k in np.load(cached[0]).files)  # the states, once
    from crystext.errors import ConfigError

    with pytest.raises(ConfigError, match="structure pooling"):
        run_benchmark(data=tmp_path / "data", out=None, **dict(FAST, runs=[run], structure_poolings=("max",)))


# --------------------------------------------------------------------------- issue 12: honest picking


def test_exploding_fit_is_tamed_by_clipping_to_the_training_range():
    """The Magpie stats4 failure in small: a column that is 0 in all but two training rows (std
    ~1e-6) and one test row where it is 1. Unclipped, ridge and the MLP put that row millions of
    standard deviations out and predict absurd values; clipped features and predictions keep the
    test error near the validation error."""
    from crystext.benchmark import fit_predict_seeds
    from crystext.benchmark.protocol import QUICK

    rng = np.random.default_rng(0)

    def rows(n):
        x = rng.normal(size=(n, 3))
        return np.column_stack([x, np.zeros(n)]), x @ [1.0, -2.0, 0.5]

    xtr, ytr = rows(200)
    xva, yva = rows(50)
    xte, yte = rows(50)
    xtr[:2, 3] = [1e-5, 2e-5]
    ytr[:2] += [3.0, 6.0]  # the rare column "explains" two training targets
    xte[0, 3] = 1.0  # a test composition with a value never seen in training
    z = (1.0 - xtr[:, 3].mean()) / xtr[:, 3].std()
    assert z > 1e4  # the failure mode: a test feature far outside the training range
    for regressor, seeds in (("ridge", [0]), ("mlp", [0, 1])):
        for pred, info in fit_predict_seeds(regressor, xtr, ytr, xva, yva, xte, seeds, QUICK):
            assert ytr.min() <= pred.min() and pred.max() <= ytr.max()
            test = float(np.mean(np.abs(pred - yte)))
            assert test < 3 * info["val_mae"] + 0.5, (regressor, test, info)


def test_settings_are_picked_on_validation_and_ties_are_reported():
    """A setting with the best test MAE but a poor validation MAE is not the one reported; ranks
    treat a difference inside the paired bootstrap interval as a tie."""
    from crystext.benchmark.selection import blowups, selected_settings

    rows, errors = [], {}
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 1.5, 400)
    spec = {  # rep: {(pooling, regressor): (val MAE, per-row test errors)}
        "a": {("mean", "ridge"): (1.0, base), ("mean", "hgb"): (2.0, base * 0.5)},  # hgb best on test, worse on val
        "b": {("mean", "ridge"): (1.1, base + (lambda e: e - e.mean() + 0.001)(rng.normal(0, 0.05, 400)))},  # noise
        "c": {("mean", "ridge"): (0.2, base * 3.0)},  # far worse on test than on validation
    }
    for rep, settings in spec.items():
        for (pool, reg), (val, err) in settings.items():
            common = dict(task="t/fold0", representation=rep, pooling=pool, regressor=reg, seed=0)
            rows += [dict(common, metric="mae", value=float(err.mean())), dict(common, metric="val_mae", value=val)]
            errors[("t/fold0", rep, pool, reg, 0)] = err
    results = pd.DataFrame(rows)
    sel = selected_settings(results, errors).set_index("representation")
    assert sel.loc["a", "regressor"] == "ridge"  # picked on validation, not on its better test MAE
    assert sel.loc["a", "test_mae"] == pytest.approx(base.mean())
    assert set(sel["task"]) == {"t"}  # folds are reported under their group
    assert sel.loc["a", "rank"] == 1 and sel.loc["b", "rank"] == 1 and sel.loc["b", "tied_with_best"]
    assert sel.loc["c", "rank"] == 3 and not sel.loc["c", "tied_with_best"]
    assert sel.loc["b", "diff_lo"] < 0 < sel.loc["b", "diff_hi"]
    # without per-row errors the seed-noise fallback still picks on validation
    assert selected_settings(results).set_index("representation").loc["a", "regressor"] == "ridge"
    flagged = blowups(results)
    assert list(flagged["representation"]) == ["c"] and flagged["ratio"].iloc[0] > 3
    with pytest.raises(ValueError, match="val_mae"):
        selected_settings(results[results["metric"] == "mae"])


def _structure_task(folder: Path, n_train: int, n_test: int, folds: int = 0) -> None:
    folder.mkdir(parents=True)
    table = _perovskite_rows(n_train + n_test, 7).rename(columns={"heat_all": "target"})[["cif", "target"]]
    table.insert(0, "material_id", [f"mp-{i}" for i in range(len(table))])
    if folds:
        for k in range(folds):
            test = table.iloc[k::folds]
            table.drop(test.index).to_csv(folder / f"train{k}.csv", index=False)
            test.to_csv(folder / f"test{k}.csv", index=False)
    else:
        table.iloc[:n_train].to_csv(folder / "train.csv", index=False)
        table.iloc[n_train:].to_csv(folder / "test.csv", index=False)


def test_any_cif_folder_is_a_structure_task_with_baselines(tmp_path):
    """A folder whose CSVs have a cif column is a structure task (train/test or folds, target
    column 'target'); ACE and the trained graph network run under the same protocol, their
    vectors are cached per structure, and the report lists the picked settings."""
    _structure_task(tmp_path / "data" / "mp_toy", 40, 14)
    _structure_task(tmp_path / "data" / "mp_folds", 30, 10, folds=2)
    tasks = discover_tasks(tmp_path / "data")
    assert [(t.name, t.kind, t.target) for t in tasks] == [
        ("mp_folds/fold0", "structure", "target"), ("mp_folds/fold1", "structure", "target"),
        ("mp_toy", "structure", "target")]
    s = load_splits(tasks[0])
    assert s["train"].cifs and s["train"].formulas[0]  # the formula comes from the CIF
    kwargs = dict(FAST, tables={"informative": informative_table()}, regressors=("ridge",), tasks=["mp_toy"],
                  structure_baselines=("ace", "cgcnn"), cache_dir=tmp_path / "cache", seeds=(0,))
    res = run_benchmark(data=tmp_path / "data", out=tmp_path / "out", **kwargs)
    got = res.results[res.results["metric"] == "mae"]
    assert set(got["representation"]) == {"informative", "ace", "cgcnn"}
    assert set(got.loc[got["representation"] == "cgcnn", "regressor"]) == {"trained"}
    assert np.isfinite(got["value"]).all()
    cache = list((tmp_path / "cache" / "structure-vectors").rglob("*.npz"))
    assert len(cache) == 1 and "ace" in str(cache[0])
    with np.load(cache[0]) as z:
        # every structure used once (train, carved validation, test; rows with Ba/Nb, absent from
        # the informative table, were dropped before featurising)
        assert len(z["keys"]) == res.coverage["used"].sum() > 20
    again = run_benchmark(data=tmp_path / "data", out=None, **kwargs)
    ace = lambda r: r.results[r.results["representation"] == "ace"].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(ace(again), ace(res))  # read back from the cache
    report = (tmp_path / "out" / "report.md").read_text()
    assert "picked (pooling / regressor)" in report and "`cgcnn`" in report


def test_bad_task_folders_give_clear_errors_or_counted_skips(tmp_path):
    from crystext.errors import DataNotFoundError

    # no target column
    bad = tmp_path / "a" / "notarget"
    write_task(bad, {k: v.rename(columns={"target": "y"}) for k, v in toy_splits(n=(10, 5, 5)).items()})
    with pytest.raises(DataNotFoundError, match=r"notarget.*\.csv: no column 'target'"):
        discover_tasks(tmp_path / "a")
    # a structure table without a target column
    s = tmp_path / "s" / "mp_x"
    s.mkdir(parents=True)
    (s / "train.csv").write_text('material_id,cif,energy\nmp-1,"data_x",1\n')
    (s / "test.csv").write_text('material_id,cif,energy\nmp-2,"data_y",1\n')
    with pytest.raises(DataNotFoundError, match=r"mp_x.*test.csv.*'target'"):
        discover_tasks(tmp_path / "s")
    # mismatched folds
    f = tmp_path / "f" / "mb"
    parts = toy_splits(n=(10, 5, 5))
    write_task(f, {"train0": parts["train"], "test0": parts["test"], "train1": parts["train"]})
    with pytest.raises(DataNotFoundError, match=r"fold 1 is incomplete.*test1.csv"):
        discover_tasks(tmp_path / "f")
    # an unparsable file names the file
    u = tmp_path / "u" / "broken"
    write_task(u, toy_splits(n=(10, 5, 5)))
    (u / "val.csv").write_text('formula,target\n"Fe2O3,1\nLi,2,3,4\n')
    (task,) = discover_tasks(tmp_path / "u")
    with pytest.raises(DataNotFoundError, match=r"val.csv"):
        load_splits(task)
    # unparsable rows are counted, naming file and row; a bad CIF is a counted skip too
    _structure_task(tmp_path / "r" / "mp_rows", 20, 8)
    train = pd.read_csv(tmp_path / "r" / "mp_rows" / "train.csv", dtype={"target": str})
    train.loc[3, "target"] = "oops"
    train.loc[5, "cif"] = "data_broken\n_cell_length_a 3\n"
    train.loc[7, "cif"] = "data_half\n_chemical_formula_sum 'Sr1 Ti1 O3'\n"  # a formula but no structure
    train.to_csv(tmp_path / "r" / "mp_rows" / "train.csv", index=False)
    (task,) = discover_tasks(tmp_path / "r")
    split = load_splits(task)["train"]
    assert split.skipped == {"non-numeric target": 1, "CIF without _chemical_formula_sum": 1}
    assert split.skipped_examples == ["train.csv row 4: non-numeric target 'oops'",
                                      "train.csv row 6: CIF without _chemical_formula_sum"]
    res = run_benchmark(data=tmp_path / "r", out=None, **dict(FAST, tables={"informative": informative_table()},
                                                              structure_baselines=("ace",), regressors=("ridge",),
                                                              cache_dir=tmp_path / "cache"))
    why = " ".join(res.coverage["reasons"])
    assert "non-numeric target: 1" in why and "train.csv row 4" in why
    assert "CIF without _chemical_formula_sum: 1" in why
    assert "unreadable CIF" in why  # counted, not fatal


def test_leakage_counts_test_rows_found_in_the_pretraining_corpus(tmp_path):
    """Test structures / compositions of a task that occur in a run's corpus are counted, from the
    sources named in corpus_summary.json, from a shipped corpus_identity.json, or reported as not
    available."""
    from crystext.benchmark.leakage import IDENTITY_FILE, leakage_table, task_identities, write_identity
    from crystext.benchmark.representations import structure_texts

    test = _perovskite_rows(10, 3)
    seen = pd.concat([test.iloc[:4], _perovskite_rows(5, 4)])  # 4 test structures in the corpus
    seen.to_csv(tmp_path / "corpus.csv", index=False)
    rebuilt = tmp_path / "runs" / "rebuilt"
    rebuilt.mkdir(parents=True)
    (rebuilt / "corpus_summary.json").write_text(json.dumps(
        {"config": {"sources": [str(tmp_path / "corpus.csv"), "../nowhere.csv"], "symprec": 0.1}}))
    shipped = tmp_path / "runs" / "shipped"
    shipped.mkdir()
    texts, _ = structure_texts(list(test["cif"]))
    write_identity(shipped, formulas=["SrTiO3"], texts=texts[:2])
    assert (shipped / IDENTITY_FILE).is_file()
    bare = tmp_path / "runs" / "bare"
    bare.mkdir()

    ids = {"perov": task_identities(list(test["formula"]), texts), "comp": task_identities(["SrTiO3", "Fe2O3"], None)}
    table = leakage_table({"rebuilt": rebuilt, "shipped": shipped, "bare": bare}, ids, cache_dir=tmp_path / "cache")
    t = table.set_index(["run", "task"])
    comps_seen = set(seen["formula"])
    assert t.loc[("rebuilt", "perov"), "test_structures_in_corpus"] == 4
    assert t.loc[("rebuilt", "perov"), "test_compositions_in_corpus"] == sum(f in comps_seen for f in test["formula"])
    assert t.loc[("rebuilt", "comp"), "test_structures_in_corpus"] == ""  # composition task: no structures
    assert "not found: ../nowhere.csv" in t.loc[("rebuilt", "perov"), "corpus"]
    assert t.loc[("shipped", "perov"), "test_structures_in_corpus"] == 2
    assert t.loc[("shipped", "comp"), "test_compositions_in_corpus"] == 1
    assert t.loc[("bare", "perov"), "corpus"].startswith("corpus not available")
    assert list((tmp_path / "cache" / "corpus-identity").glob("*.json"))  # the rebuilt identity is cached


def test_structure_texts_are_cached_per_structure(tmp_path, monkeypatch):
    """Overlapping CIF lists (folds, targets, reruns) convert each structure once."""
    from crystext import encoding
    from crystext.benchmark import representations as reps

    cifs = list(_perovskite_rows(6, 9)["cif"])
    calls = []
    real = encoding._convert
    monkeypatch.setattr(encoding, "_convert", lambda args: calls.append(args[0]) or real(args))
    first, _ = reps.structure_texts(cifs[:4], tmp_path)
    assert len(calls) == 4
    again, bad = reps.structure_texts(cifs[2:] + ["not a cif"], tmp_path)
    assert len(calls) == 7  # only the two new structures and the bad one are converted
    assert again[:2] == first[2:] and again[-1] is None and bad == {"CIFParseError": 1}
    assert reps.structure_texts(cifs[2:] + ["not a cif"], tmp_path)[0] == again and len(calls) == 7
    # texts an earlier benchmark cached in sharded JSON (keyed by the CIF's SHA-1) are adopted, not converted
    import hashlib
    import json

    old = tmp_path / "old"
    (old / "texts" / "sym0.1").mkdir(parents=True)
    key = hashlib.sha1(cifs[0].encode()).hexdigest()[:16]
    (old / "texts" / "sym0.1" / f"{key[:2]}.json").write_text(json.dumps({key: [first[0], None]}))
    adopted, _ = reps.structure_texts(cifs[:1], old)
    assert adopted == first[:1] and len(calls) == 7
    assert reps.structure_texts(cifs[:1], old)[0] == adopted and len(calls) == 7  # now in the JSONL cache


def test_structure_featurisation_in_processes_equals_one_process():
    """Parsing and ACE vectors computed over two worker processes are those of one process, in
    input order, with unreadable CIFs counted and left as NaN rows."""
    from crystext.benchmark.structures import QUICK_STRUCTURE, parse_structures, structure_vectors

    cifs = list(_perovskite_rows(70, 3)["cif"])
    cifs[5] = "not a cif"
    one, bad1 = parse_structures(cifs)
    two, bad2 = parse_structures(cifs, n_jobs=2)
    assert bad1 == bad2 and sum(bad1.values()) == 1 and one[5] is None and two[5] is None
    assert all(a is None or a == b for a, b in zip(one, two))
    v1, n1 = structure_vectors("ace", cifs, one, QUICK_STRUCTURE, None, "t")
    v2, n2 = structure_vectors("ace", cifs, two, QUICK_STRUCTURE, None, "t", n_jobs=2)
    assert n1 == n2 == 1 and np.isnan(v2[5]).all()
    np.testing.assert_allclose(v1, v2, rtol=1e-12, equal_nan=True)
