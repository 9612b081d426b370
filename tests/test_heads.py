"""Multi-scale heads: learning, fusion weights, early stopping, bad rows, save/load round trip, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Lattice, Structure

from crystext.errors import ConfigError, DataNotFoundError
from crystext.heads import BranchFeaturizer, BranchInputs, MultiScaleRegressor

torch.set_num_threads(1)


def perovskite(a: float, b_site: str, x: str = "O", shift: float = 0.0) -> Structure:
    return Structure(Lattice.cubic(a), ["Sr", b_site, x, x, x],
                     [[0, 0, 0], [0.5, 0.5, 0.5 + shift], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


@pytest.fixture(scope="module")
def data():
    """60 distorted perovskites; the target depends on geometry (a, shift) and chemistry (B site)."""
    rng = np.random.default_rng(0)
    structures, y = [], []
    for k in range(60):
        a, shift, b = rng.uniform(3.8, 4.3), rng.uniform(-0.04, 0.04), ["Ti", "Zr", "Sn"][k % 3]
        structures.append(perovskite(a, b, shift=shift))
        y.append(3.0 * (a - 4.0) + 40 * shift**2 + {"Ti": 0.0, "Zr": 0.5, "Sn": -0.3}[b])
    lm = rng.normal(size=(60, 16))  # stands in for precomputed LM structure embeddings
    lm[:, 0] = np.array(y) + rng.normal(0, 0.05, 60)  # one informative direction
    feat = BranchFeaturizer(branches=["lm", "ace", "graph"], element_table=pd.DataFrame(
        {"en": [0.95, 1.54, 1.33, 1.96, 3.44], "r": [2.15, 1.47, 1.60, 1.40, 0.66]}, index=["Sr", "Ti", "Zr", "Sn", "O"]),
        ace_params=dict(cutoff=4.5, n_radial=3, max_angular=2), graph_params=dict(cutoff=4.5))
    feat.fit(structures)
    inputs = feat.transform(structures, lm_embeddings=lm)
    return structures, np.array(y), inputs, feat


def test_branch_inputs(data):
    _, y, inputs, _ = data
    assert sorted(inputs.branches) == ["ace", "graph", "lm"] and len(inputs) == 60
    sub = inputs.subset([3, 1])
    assert len(sub) == 2 and sub.graphs[0] is inputs.graphs[3]
    with pytest.raises(ConfigError, match="lack composition"):
        inputs.select(["lm", "composition"])
    with pytest.raises(ConfigError, match="unknown branch"):
        BranchFeaturizer(branches=["lm", "xrd"])


@pytest.mark.parametrize("fusion", ["gated", "concat"])
def test_fused_head_learns_and_round_trips(data, tmp_path, fusion):
    _, y, inputs, feat = data
    train, test = np.arange(45), np.arange(45, 60)
    model = MultiScaleRegressor(branches=["lm", "ace", "graph"], fusion=fusion, width=16, hidden=32,
                                graph_encoder=dict(hidden=16, n_layers=2), max_epochs=40, patience=40,
                                lr=3e-3, batch_size=16, seed=1, branch_dropout=0.1, aux_weight=0.3)
    model.fit(inputs.subset(train), y[train])
    dummy = np.mean(np.abs(y[test] - y[train].mean()))
    mae = model.mae(inputs.subset(test), y[test])
    assert mae < 0.65 * dummy, (mae, dummy)  # 45 training rows, 3 branches
    weights = model.branch_weights(inputs.subset(test))
    if fusion == "gated":
        assert set(weights) == {"lm", "ace", "graph"} and abs(sum(weights.values()) - 1) < 1e-6
    else:
        assert weights is None
    # save/load: identical predictions, config JSON, featuriser settings
    folder = model.save_pretrained(tmp_path / "head", featurizer=feat)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "crystext-multiscale" and cfg["net"]["fusion"] == fusion
    assert cfg["net"]["branches"] == ["lm", "ace", "graph"] and (folder / "model.safetensors").is_file()
    assert (folder / "element_table.csv").is_file() and cfg["featurizer"]["element_table"] == "element_table.csv"
    loaded = MultiScaleRegressor.from_pretrained(folder)
    np.testing.assert_allclose(loaded.predict(inputs), model.predict(inputs), rtol=1e-6, atol=1e-6)
    feat2 = loaded.featurizer(folder).fit(data[0])
    again = feat2.transform(data[0][:5], lm_embeddings=inputs.features["lm"][:5])
    np.testing.assert_allclose(again.features["ace"], inputs.features["ace"][:5], rtol=1e-10)


def test_early_stopping_keeps_the_best_epoch():
    rng = np.random.default_rng(0)
    x = BranchInputs({"lm": rng.normal(size=(80, 8))})
    y = rng.normal(size=80)  # pure noise: validation stops improving quickly
    model = MultiScaleRegressor(branches=["lm"], width=8, hidden=16, max_epochs=200, patience=5, seed=0).fit(x, y)
    assert model.n_epochs_ < 200
    vals = [h["val_mae"] for h in model.history_]
    assert model.best_val_mae_ == min(vals) and np.argmin(vals) == model.n_epochs_ - 1 - 5
    # the restored weights are the best epoch's: recomputing the validation MAE reproduces it
    perm = np.random.default_rng(0).permutation(80)
    val = perm[:8]
    np.testing.assert_allclose(np.mean(np.abs(model.predict(x.subset(val)) - y[val])), model.best_val_mae_, rtol=1e-5)


def test_bad_rows_are_dropped_and_predicted_as_nan():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(50, 4))
    y = f[:, 0] * 2
    f[3] = np.nan
    x = BranchInputs({"composition": f})
    model = MultiScaleRegressor(branches=["composition"], width=8, hidden=8, max_epochs=5, patience=5).fit(x, y)
    assert model.dropped_ == 1
    pred = model.predict(x)
    assert np.isnan(pred[3]) and np.isfinite(np.delete(pred, 3)).all()
    with pytest.raises(ConfigError, match="targets"):
        model.fit(x, y[:10])
    with pytest.raises(ConfigError, match="not fitted"):
        MultiScaleRegressor(branches=["lm"]).predict(x)
    with pytest.raises(DataNotFoundError):
        MultiScaleRegressor.from_pretrained("/nonexistent/head")


def test_cli_train_and_predict(tmp_path, capsys):
    from crystext.cli import main

    rng = np.random.default_rng(2)
    rows = []
    for k in range(40):
        a = rng.uniform(3.8, 4.3)
        rows.append({"material_id": f"m{k}", "cif": perovskite(a, ["Ti", "Zr"][k % 2]).to(fmt="cif"), "y": 2 * a + (k % 2)})
    table, train = tmp_path / "t.csv", tmp_path / "train.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    bad = [{"material_id": "broken", "cif": "data_x\n_cell_length_a oops\n", "y": 1.0},
           {"material_id": "unlabelled", "cif": rows[0]["cif"], "y": None}]
    pd.DataFrame(rows + bad).to_csv(train, index=False)
    out = tmp_path / "head"
    assert main(["heads", "train", "--train", str(train), "--test", str(table), "--target", "y",
                 "--branches", "composition,ace", "--epochs", "5", "--width", "8", "--n-folds", "2", "--out", str(out),
                 ]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_train"] == 40 and res["test_mae"] >= 0
    listed = pd.read_csv(res["skipped_file"])
    assert res["skipped"] == 2 and sorted(listed["id"]) == ["broken", "unlabelled"] and res["skipped_file"] == str(out / "skipped.csv")
    assert set(res["branch_weights"]) == {"composition", "ace", "joint:composition+ace"}
    pred_csv = tmp_path / "pred.csv"
    assert main(["heads", "predict", "--model", str(out), "--table", str(table), "--target", "y", "--out", str(pred_csv)]) == 0
    assert abs(json.loads(capsys.readouterr().out)["mae"] - res["test_mae"]) < 1e-6
    assert list(pd.read_csv(pred_csv).columns) == ["id", "prediction", "target"]
    assert main(["heads", "predict", "--model", str(tmp_path / "nothing"), "--table", str(table), "--out", str(pred_csv)]) == 2
    assert "not a saved MultiScaleRegressor" in capsys.readouterr().err


# ----------------------------------------------------------------------------- regressions (issue 14)
def test_pca_keeps_no_more_components_than_the_centred_rank():
    """12 training rows of a 40-D branch with reduce_dim=20: centred data has rank <= 11, so a 12th
    component would be scaled by ~1e12 and blow up held-out rows."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 40)), rng.normal(size=40)
    train, val, held = np.arange(12), np.arange(12, 16), np.arange(16, 40)
    xi = BranchInputs({"lm": x})
    model = MultiScaleRegressor(branches=["lm"], width=8, hidden=8, reduce_dim=20, max_epochs=2, patience=2)
    model.fit(xi.subset(train), y[train], xi.subset(val), y[val])
    br = model.net_.branches["lm"]
    z = ((torch.as_tensor(x[held], dtype=torch.float32) - br.mean) / br.scale) @ br.proj
    assert float(z.abs().max()) < 1e3 and br.proj.shape[1] <= 11, (float(z.abs().max()), br.proj.shape)
    assert float(z.abs().max()) < 1e3, float(z.abs().max())


def test_gate_gives_dropped_branches_no_weight():
    rng = np.random.default_rng(4)
    x = BranchInputs({"lm": rng.normal(size=(64, 6)), "composition": rng.normal(size=(64, 5)), "ace": rng.normal(size=(64, 7))})
    y = rng.normal(size=64)
    model = MultiScaleRegressor(branches=["lm", "composition", "ace"], width=8, hidden=8, max_epochs=1, patience=1,
                                fusion="gated", branch_dropout=0.5, seed=0).fit(x, y)
    net = model.net_
    seen = {}
    handle = net.gate.register_forward_hook(lambda mod, inp, out: seen.update(h=inp[0].detach()))
    net.train()
    torch.manual_seed(0)
    feats, gb = model._batch(x, np.arange(64))
    with torch.no_grad():
        _, alpha = net(feats, gb)[:2]
    handle.remove()
    dropped = (seen["h"].abs().sum(-1) == 0)  # (B, n_branches): branches zeroed by branch dropout
    assert dropped.any() and not dropped.all(1).any()
    assert float(alpha[dropped].abs().max()) == 0.0
    np.testing.assert_allclose(alpha.sum(1).numpy(), 1.0, rtol=1e-6)


def test_all_nan_validation_history_is_a_clear_error(monkeypatch):
    rng = np.random.default_rng(5)
    x, y = BranchInputs({"lm": rng.normal(size=(30, 4))}), rng.normal(size=30)
    monkeypatch.setattr(MultiScaleRegressor, "_predict", lambda self, inputs, **kw: np.full(len(inputs), np.nan))
    with pytest.raises(Exception) as info:
        MultiScaleRegressor(branches=["lm"], width=8, hidden=8, max_epochs=3, patience=3).fit(x, y)
    assert not isinstance(info.value, TypeError)
    assert "validation" in str(info.value) and "not finite" in str(info.value)


def test_score_is_higher_is_better_r2():
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(6)
    f = rng.normal(size=(120, 3))
    y = 2 * f[:, 0] - f[:, 1]
    x = BranchInputs({"composition": f})
    good = MultiScaleRegressor(branches=["composition"], width=16, hidden=16, max_epochs=60, patience=60, lr=3e-3, seed=0).fit(x, y)
    bad = MultiScaleRegressor(branches=["composition"], width=16, hidden=16, max_epochs=1, patience=1, lr=1e-5, seed=0).fit(x, y)
    assert good.score(x, y) > bad.score(x, y)
    np.testing.assert_allclose(good.score(x, y), r2_score(y, good.predict(x)), rtol=1e-9)


# ----------------------------------------------------------------------------- HF objects, sklearn protocol
@pytest.fixture(scope="module")
def small_fit():
    rng = np.random.default_rng(7)
    x = BranchInputs({"lm": rng.normal(size=(60, 40)), "composition": rng.normal(size=(60, 5))})
    y = x.features["composition"][:, 0] + 0.1 * rng.normal(size=60)
    model = MultiScaleRegressor(branches=["lm", "composition"], width=8, hidden=8, reduce_dim=16, max_epochs=5, patience=5, seed=0)
    return x, y, model.fit(x, y)


def test_native_transformers_round_trip(small_fit, tmp_path):
    from transformers import PretrainedConfig, PreTrainedModel

    from crystext.heads import MultiScaleConfig, MultiScaleModel

    x, _, model = small_fit
    folder = model.save_pretrained(tmp_path / "head")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    hf = MultiScaleModel.from_pretrained(folder)
    assert isinstance(hf, PreTrainedModel) and isinstance(hf.config, PretrainedConfig)
    assert isinstance(hf.config, MultiScaleConfig) and hf.config.model_type == "crystext-multiscale"
    feats, gb = model._batch(x, np.arange(len(x)))
    with torch.no_grad():
        np.testing.assert_allclose(hf.eval()(feats, gb).numpy(), model.predict(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(MultiScaleRegressor.from_pretrained(folder).predict(x), model.predict(x))
    from transformers import AutoModel

    assert type(AutoModel.from_pretrained(folder)) is MultiScaleModel  # no remote code: crystext's class
    bad = tmp_path / "other"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (bad / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="not a crystext multi-scale head"):
        MultiScaleRegressor.from_pretrained(bad)


def test_sklearn_clone_and_params(small_fit):
    from sklearn.base import clone

    x, y, model = small_fit
    twin = clone(model)
    assert twin.get_params() == model.get_params() and not hasattr(twin, "net_")
    twin.set_params(width=4)
    assert twin.width == 4 and model.width == 8
    with pytest.raises(ConfigError, match="no parameter"):
        twin.set_params(colour="red")
    np.testing.assert_allclose(clone(model).fit(x, y).predict(x), model.predict(x), rtol=1e-5, atol=1e-6)  # same seed


def test_push_to_hub_uploads_the_saved_folder(small_fit, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls["repo"] = (repo_id, private, exist_ok)

        def upload_folder(self, folder_path, repo_id, commit_message):
            from pathlib import Path

            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            calls["config"] = json.loads((Path(folder_path) / "config.json").read_text())

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    _, _, model = small_fit
    assert model.push_to_hub("me/head", private=True) == "me/head"
    assert calls["repo"] == ("me/head", True, True)
    assert calls["files"] == ["config.json", "model.safetensors"] and calls["config"]["model_type"] == "crystext-multiscale"


def test_head_refuses_inputs_of_another_branch_set(small_fit):
    x, _, model = small_fit
    with pytest.raises(ConfigError, match="trained on branches lm, composition"):
        model.predict(BranchInputs({"lm": x.features["lm"], "ace": x.features["composition"]}))
    with pytest.raises(ConfigError, match="has 6 features but this head was trained on 5"):
        model.predict(BranchInputs({"lm": x.features["lm"], "composition": np.zeros((60, 6))}))


# ----------------------------------------------------------------------------- stacked fusion
@pytest.fixture(scope="module")
def stack_data():
    """Two informative branches (each sees half the signal) and one pure-noise branch."""
    rng = np.random.default_rng(8)
    n = 160
    a, b = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    y = a[:, 0] + b[:, 0] + 0.05 * rng.normal(size=n)
    a[7] = np.nan  # branch "lm" cannot featurise structure 7
    x = BranchInputs({"lm": a, "ace": b, "noise": rng.normal(size=(n, 4))})
    return x, y


def test_stack_is_never_worse_than_its_best_branch_on_validation(stack_data, tmp_path):
    from sklearn.base import clone

    from crystext.heads import StackedRegressor

    x, y = stack_data
    train, test = np.arange(120), np.arange(120, 160)
    model = StackedRegressor(branches=["lm", "ace", "noise"], n_folds=3, seed=0, joint=None, subset_means=False,
                             base_params=dict(width=16, hidden=16, max_epochs=40, patience=10, lr=3e-3))
    model.fit(x.subset(train), y[train])
    # never worse than its best branch on the rows it was chosen on (default: out-of-fold + validation)
    singles = [model.selection_maes_[b] for b in ("lm", "ace", "noise")]
    assert model.selection_maes_[model.choice_] <= min(singles) + 1e-12
    # the two informative branches are combined; the noise branch is left out (subset) or ~weightless
    assert model.choice_ in ("stack", "stack:lm+ace") and model.weights_[2] < 0.2 * min(model.weights_[:2])
    assert {"stack:lm+ace", "stack:lm+noise", "stack:ace+noise"} <= set(model.selection_maes_)
    assert set(model.restrict(["lm", "ace", "noise"], subsets=False).selection_maes_) == {"lm", "ace", "noise", "mean", "stack"}
    # subset_means: the plain mean of every subset is a candidate too, scored on the out-of-fold +
    # validation rows like the others
    assert not any(n.startswith("mean:") for n in model.selection_maes_)
    means = model.restrict(["lm", "ace", "noise"], subset_means=True)
    assert {"mean:lm+ace", "mean:lm+noise", "mean:ace+noise"} <= set(means.selection_maes_)

    def pair_mean_errors(p, t):  # a missing branch prediction stands in as the row's mean of the others
        p = np.where(np.isfinite(p), p, np.nanmean(p, axis=1, keepdims=True))
        return np.abs((p[:, 0] + p[:, 1]) / 2 - t)

    expected = np.concatenate([pair_mean_errors(model.oof_predictions_, model.oof_targets_),
                               pair_mean_errors(model.val_predictions_, model.val_targets_)])
    assert means.selection_maes_["mean:lm+ace"] == pytest.approx(expected.mean())
    assert means.selection_maes_[means.choice_] <= min(means.selection_maes_.values()) + 1e-12
    assert model.missing_ == {"lm": 1, "ace": 0, "noise": 0}
    # on test the fusion of two half-informative branches beats either alone
    branch = model.branch_maes(x.subset(test), y[test])
    assert model.mae(x.subset(test), y[test]) < 0.8 * min(branch.values())
    assert model.score(x.subset(test), y[test]) > 0.5
    # the row lacking the lm branch falls back to the other branches: a finite prediction
    assert np.isfinite(model.predict(x.subset([7]))).all()
    # ablation without refits; a single branch is chosen as itself
    sub = model.restrict(["ace"])
    assert set(sub.val_maes_) == {"ace", "mean", "stack"}
    # the validation-only rule on the same fit: never worse than the best branch on validation
    by_val = model.restrict(["lm", "ace", "noise"], select_on="validation")
    assert by_val.best_val_mae_ <= min(by_val.val_maes_[b] for b in ("lm", "ace", "noise")) + 1e-12
    assert by_val.selection_maes_ == by_val.val_maes_
    with pytest.raises(ConfigError, match="select_on must be"):
        model.restrict(["ace"], select_on="test")
    # save/load gives the same predictions; clone gives an unfitted twin
    folder = model.save_pretrained(tmp_path / "stack")
    np.testing.assert_allclose(StackedRegressor.from_pretrained(folder).predict(x), model.predict(x), rtol=1e-6, atol=1e-6)
    assert clone(model).get_params() == model.get_params()
    with pytest.raises(ConfigError, match="trained on branches"):
        model.predict(BranchInputs({"lm": x.features["lm"]}))


def test_stack_picks_the_single_branch_when_the_others_are_noise():
    from crystext.heads import StackedRegressor

    rng = np.random.default_rng(9)
    n = 150
    good = rng.normal(size=(n, 2))
    y = 2 * good[:, 0]
    x = BranchInputs({"chgnet": good, "composition": rng.normal(size=(n, 3))})
    model = StackedRegressor(branches=["chgnet", "composition"], n_folds=3, seed=1,
                             base_params=dict(width=16, hidden=16, max_epochs=40, patience=10, lr=3e-3)).fit(x, y)
    assert model.selection_maes_[model.choice_] <= model.selection_maes_["chgnet"] + 1e-12
    assert model.weights_[1] <= 0.1 * max(model.weights_[0], 1e-9) or model.choice_ == "chgnet"


def test_cv_selection_scores_the_stack_out_of_fold():
    """select_on='cv': the stack's selection MAE is cross-fitted (no row scored by a combiner fitted
    on it), so a pure-noise branch gains the stack nothing over the informative branch alone."""
    from crystext.heads import StackedRegressor

    rng = np.random.default_rng(11)
    n = 200
    good = rng.normal(size=(n, 2))
    y = good[:, 0] + 0.3 * rng.normal(size=n)
    x = BranchInputs({"ace": good, "noise": rng.normal(size=(n, 3))})
    model = StackedRegressor(branches=["ace", "noise"], n_folds=4, seed=2, joint=None,
                             base_params=dict(width=16, hidden=16, max_epochs=40, patience=10, lr=3e-3)).fit(x, y)
    n_rows = len(model.oof_targets_) + len(model.val_targets_)
    assert n_rows == n
    oof = model.oof_predictions_[:, 0]
    expected = np.concatenate([np.abs(oof - model.oof_targets_), np.abs(model.val_predictions_[:, 0] - model.val_targets_)])
    assert model.selection_maes_["ace"] == pytest.approx(expected.mean())
    assert model.choice_ in ("ace", "stack")
    assert model.selection_maes_["noise"] > model.selection_maes_["ace"]
    with pytest.raises(ConfigError, match="select_on must be"):
        StackedRegressor(branches=["ace"], select_on="test").fit(x, y)


def test_fold_bagged_prediction_is_the_mean_of_the_fold_models(stack_data, tmp_path):
    """predict_with='folds': each branch predicts the mean of its fold regressors (the models the
    combiner was fitted on), for validation and test rows alike, and survives save/load."""
    from crystext.heads import StackedRegressor

    x, y = stack_data
    train, test = np.arange(120), np.arange(120, 160)
    model = StackedRegressor(branches=["lm", "ace"], n_folds=3, seed=3, predict_with="folds", joint=None,
                             base_params=dict(width=16, hidden=16, max_epochs=30, patience=8, lr=3e-3))
    model.fit(x.subset(train), y[train])
    assert [len(model.fold_models_[b]) for b in ("lm", "ace")] == [3, 3]
    xt = x.subset(test)
    expected = np.mean([m.predict(xt.select(["ace"])) for m in model.fold_models_["ace"]], axis=0)
    np.testing.assert_allclose(model.branch_predictions(xt)["ace"], expected, rtol=1e-6)
    assert not np.allclose(expected, model.models_["ace"].predict(xt.select(["ace"])))
    # the choice was made on the fold-mean validation predictions
    refit = model.restrict(["lm", "ace"], predict_with="refit")
    assert not np.allclose(refit.val_predictions_, model.val_predictions_)
    assert model.restrict(["lm", "ace"]).val_predictions_ is model.val_predictions_
    np.testing.assert_allclose(refit.branch_predictions(xt)["ace"], model.models_["ace"].predict(xt.select(["ace"])))
    folder = model.save_pretrained(tmp_path / "folds")
    assert (folder / "branch_ace_fold2").is_dir()
    loaded = StackedRegressor.from_pretrained(folder)
    np.testing.assert_allclose(loaded.predict(xt), model.predict(xt), rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="predict_with must be"):
        model.restrict(["ace"], predict_with="best")
    with pytest.raises(ConfigError, match="predict_with must be"):
        StackedRegressor(branches=["ace"], predict_with="best").fit(x, y)


def test_wide_branch_pca_matches_the_svd_subspace():
    """A wide branch with many rows takes its PCA from the Gram matrix: the same leading
    components (up to rounding) and variances as the full SVD."""
    from crystext.heads.core import _top_components

    rng = np.random.default_rng(12)
    z = rng.normal(size=(900, 40)) @ rng.normal(size=(40, 3000)) + 0.05 * rng.normal(size=(900, 3000))
    z -= z.mean(0)
    comp, s = _top_components(z, 100)  # n > 2k and n*n*d > 2e9: the Gram route
    _, s_ref, vt = np.linalg.svd(z, full_matrices=False)
    assert comp.shape == (3000, 100)
    np.testing.assert_allclose(s, s_ref[:100], rtol=1e-8)
    np.testing.assert_allclose(np.abs(np.sum(comp * vt[:100].T, 0)), 1.0, atol=1e-8)
    assert np.all(comp[np.abs(comp).argmax(0), np.arange(100)] > 0)  # sign convention


def test_joint_learner_captures_an_interaction_the_branches_cannot(tmp_path):
    """joint='best-pairs': a concat network over the best branch and each other branch is one more
    column of the combiner; a target that is a product of two branches' inputs needs it."""
    from crystext.heads import StackedRegressor

    rng = np.random.default_rng(13)
    n = 360
    a, b = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    y = a[:, 0] * b[:, 0] + 0.5 * a[:, 1]
    x = BranchInputs({"lm": a, "ace": b})
    train, test = np.arange(280), np.arange(280, n)
    model = StackedRegressor(branches=["lm", "ace"], n_folds=3, seed=4, joint="best-pairs",
                             base_params=dict(width=32, hidden=32, max_epochs=80, patience=15, lr=3e-3))
    model.fit(x.subset(train), y[train])
    assert model.learners_ == ["lm", "ace", "joint:lm+ace"]
    assert "joint" in model.choice_ or model.weights_[2] > 0.5
    xt = x.subset(test)
    singles = model.branch_maes(xt, y[test])
    assert model.mae(xt, y[test]) < 0.7 * min(singles["lm"], singles["ace"])
    # without the joint learner (same fit) the interaction is out of reach
    plain = model.restrict(["lm", "ace"], joint=False)
    assert "joint:lm+ace" not in plain.selection_maes_ and len(plain.weights_) == 2
    assert model.mae(xt, y[test]) < 0.8 * plain.mae(xt, y[test])
    # a single branch keeps no joint learner
    assert model.restrict(["ace"]).learner_names == ["ace"]
    folder = model.save_pretrained(tmp_path / "joint")
    assert (folder / "branch_joint-lm+ace").is_dir()
    np.testing.assert_allclose(StackedRegressor.from_pretrained(folder).predict(xt), model.predict(xt), rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="joint must be"):
        StackedRegressor(branches=["ace"], joint="all").fit(x, y)


def test_a_head_saved_before_joint_learners_still_loads(stack_data, tmp_path):
    """stack.json written before joint learners and fold bagging (no "learners", no "joint" or
    "predict_with" parameter) loads with its own branches and predicts as before."""
    from crystext.heads import StackedRegressor

    x, y = stack_data
    model = StackedRegressor(branches=["lm", "ace"], n_folds=2, seed=5, joint=None,
                             base_params=dict(width=8, hidden=8, max_epochs=5, patience=3)).fit(x, y)
    folder = model.save_pretrained(tmp_path / "old")
    meta = json.loads((folder / "stack.json").read_text())
    del meta["learners"], meta["params"]["joint"], meta["params"]["predict_with"]
    (folder / "stack.json").write_text(json.dumps(meta))
    loaded = StackedRegressor.from_pretrained(folder)
    assert loaded.learner_names == ["lm", "ace"]
    np.testing.assert_allclose(loaded.predict(x), model.predict(x), rtol=1e-6, atol=1e-6)
