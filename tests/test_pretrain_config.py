"""The settings of a pretraining run, one object with two faces: a preset (YAML) and the command
line's flags (``--set KEY=VALUE`` for any hyper-parameter); saved with the run and read back."""

from __future__ import annotations

import json

import pytest
import yaml

from crystext.cli import build_parser
from crystext.cli.pretrain import MAIN_JOB
from crystext.errors import ConfigError, DataNotFoundError
from crystext.pretrain_config import TRAINING_DEFAULTS, PretrainSettings, list_presets, load_preset
from crystext.settings import REPO_ROOT


def _from_cli(*argv: str, defaults: dict | None = None) -> PretrainSettings:
    return PretrainSettings.from_args(build_parser().parse_args(["pretrain", *argv]), defaults=defaults)


def test_the_defaults_live_in_one_place_and_every_preset_sets_only_known_keys():
    assert list_presets() == ["base", "cpu", "crystallm-small", "tiny"]
    assert TRAINING_DEFAULTS == PretrainSettings().training()
    assert list(TRAINING_DEFAULTS) == PretrainSettings.training_keys()
    for name in list_presets():
        raw = yaml.safe_load((REPO_ROOT / "training" / "presets" / f"{name}.yaml").read_text())["training"]
        settings = PretrainSettings.from_preset(name)
        assert settings.preset == name and settings.model == load_preset(name)["model"]
        # what the preset says, else the default
        assert settings.training() == {**TRAINING_DEFAULTS, **raw}


def test_a_preset_with_set_overrides_gives_the_settings_expected():
    settings = _from_cli("cpu", "--set", "batch_size=8", "--set", "learning_rate=3e-4", "--set", "betas=[0.9, 0.95]",
                         "--precision", "fp32", "--max-steps", "50", "--max-time", "2", "--stop-at", "7",
                         "--threads", "1", "--no-progress", "--force-resume")
    cpu = load_preset("cpu")["training"]
    assert settings.training() == {**cpu, "batch_size": 8, "learning_rate": 3e-4, "betas": [0.9, 0.95],
                                   "mixed_precision": "fp32", "max_steps": 50}
    assert (settings.max_time, settings.stop_at, settings.num_threads) == (120.0, 7, 1)
    assert (settings.progress, settings.force_resume, settings.resume) == (False, True, "auto")
    assert _from_cli("cpu", "--fresh").resume is False and _from_cli("cpu", "--resume").resume is True
    # --precision goes on top of --set, as the flags always did
    assert _from_cli("tiny", "--set", "mixed_precision=bf16", "--precision", "fp32").mixed_precision == "fp32"
    # the keyword face is the same object
    assert PretrainSettings.from_preset("cpu", max_steps=50, overrides={"batch_size": 8}).training() == \
        _from_cli("cpu", "--max-steps", "50", "--set", "batch_size=8").training()


def test_no_arguments_is_the_main_job():
    settings = _from_cli(defaults=MAIN_JOB)
    assert settings.preset == MAIN_JOB["preset"] and settings.max_time == MAIN_JOB["max_time"]
    assert settings.training() == {**load_preset("base")["training"], **MAIN_JOB["overrides"],
                                   "max_steps": MAIN_JOB["max_steps"]}
    assert _from_cli(defaults=MAIN_JOB | {"overrides": {}}).batch_size == load_preset("base")["training"]["batch_size"]
    assert _from_cli("--set", "batch_size=2", defaults=MAIN_JOB).batch_size == 2


def test_a_bad_key_or_value_gives_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="'learnin_rate'"):
        _from_cli("tiny", "--set", "learnin_rate=1e-3")
    with pytest.raises(ConfigError, match="'learnin_rate'"):
        PretrainSettings.from_preset("tiny", overrides={"learnin_rate": 1e-3})
    with pytest.raises(ConfigError, match="'batch_size' must be an integer, not 'eight'"):
        _from_cli("tiny", "--set", "batch_size=eight")
    with pytest.raises(ConfigError, match="'betas' must be two numbers"):
        _from_cli("tiny", "--set", "betas=0.9")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        _from_cli("tiny", "--set", "batch_size")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"model_type": "gpt2"}, "training": {"warmup_step": 3}}))
    with pytest.raises(ConfigError, match="warmup_step"):
        PretrainSettings.from_preset(bad)
    with pytest.raises(ConfigError, match="preset/config or an init run"):
        PretrainSettings.from_preset(None)


def test_yaml_spellings_are_read_as_meant(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("model: {model_type: gpt2}\ntraining: {learning_rate: 3e-4, max_steps: 1.0e+3, "
                      "mixed_precision: no}\n")
    settings = PretrainSettings.from_preset(preset)
    assert settings.learning_rate == 3e-4 and settings.max_steps == 1000 and isinstance(settings.max_steps, int)
    assert settings.mixed_precision == "no"


def test_the_settings_round_trip_through_their_saved_form(tmp_path):
    settings = PretrainSettings.from_preset("cpu", overrides={"batch_size": 8}, max_steps=123, stop_at=5)
    assert PretrainSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    saved = json.loads(json.dumps(settings.to_saved()))
    assert set(saved) == {"preset", "model", "training", "init"}
    back = PretrainSettings.from_saved(saved)
    assert back.training() == settings.training() and (back.preset, back.model) == (settings.preset, settings.model)
    (tmp_path / "training_config.json").write_text(json.dumps({**saved, "steps": 5}))
    assert PretrainSettings.from_run(tmp_path).to_saved() == saved
    # a run trained from another keeps the init run's name, not its path
    tuned = PretrainSettings.from_preset("tiny", init=tmp_path / "runs" / "base")
    assert tuned.to_saved()["model"] == {"init": "base"} and tuned.to_saved()["init"] == "base"
    assert PretrainSettings.from_saved(tuned.to_saved()).model is None
    with pytest.raises(DataNotFoundError, match="no pretraining settings"):
        PretrainSettings.from_run(tmp_path / "nowhere")


@pytest.mark.parametrize("release", ["crystext-base", "crystext-compact", "crystext-mp", "crystext-mp2", "crystext-mp3"])
def test_the_committed_releases_settings_still_read(release):
    folder = REPO_ROOT / "models" / release
    if not (folder / "training_config.json").is_file():
        pytest.skip(f"{release} is not in this checkout")
    saved = json.loads((folder / "training_config.json").read_text())
    settings = PretrainSettings.from_run(folder)
    # a key added since the release was trained reads as its default (what the run did without it)
    added = {k: v for k, v in TRAINING_DEFAULTS.items() if k not in saved["training"]}
    expected = {k: saved.get(k) for k in settings.to_saved()}
    expected["training"] = {**saved["training"], **added}
    assert settings.to_saved() == expected
    # and a run trained from it takes its hyper-parameters
    assert PretrainSettings.from_preset(None, init=folder).training() == expected["training"]
