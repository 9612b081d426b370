"""Training history of a run trained from another (``training_config.json`` -> ``lineage``).

A corpus trained part by part gives a chain of runs, each initialised from the one before; the
last run's ``training_config.json`` lists the whole chain so its card can say what it has seen
after the earlier run folders are gone.
"""

from __future__ import annotations

import json
from pathlib import Path


def lineage_entry(run: str | Path, cfg: dict) -> dict:
    """One row of a training history: what a run's ``training_config.json`` (``cfg``) says of it."""
    corpus = cfg.get("corpus") or {}
    train = (corpus.get("splits") or {}).get("train") or {}
    return {"run": Path(run).name, "init": cfg.get("init"), "corpus": corpus.get("name"),
            "train_documents": train.get("documents"), "steps": cfg.get("steps"), "tokens": cfg.get("tokens"),
            "epochs": cfg.get("epochs"), "train_time_s": cfg.get("train_time_s"),
            "precision": _precision(cfg), "hardware": cfg.get("hardware")}


def _precision(cfg: dict) -> str | None:
    """The precision a run trained in (``precision.resolved``; older runs: ``mixed_precision``)."""
    precision = cfg.get("precision")
    if isinstance(precision, dict):
        return precision.get("resolved")
    return precision or cfg.get("mixed_precision")


def lineage_of_init(init: str | Path | None) -> list[dict]:
    """The runs a new run is trained from, earliest first: the init run's own lineage, then the
    init run. Empty for a run from scratch or an init run without ``training_config.json``."""
    cfg_path = None if init is None else Path(init) / "training_config.json"
    if cfg_path is None or not cfg_path.is_file():
        return []
    cfg = json.loads(cfg_path.read_text())
    return list(cfg.get("lineage") or []) + [lineage_entry(init, cfg)]
