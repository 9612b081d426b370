"""Release a trained run on the Hugging Face Hub: model card, verified export, upload.

``export_for_hub`` assembles a Hub-ready folder (config, ``model.safetensors``, tokenizer files,
the card as ``README.md``, the element-embeddings CSV, benchmark results) and ``verify_export``
loads it back offline in a fresh process before anything leaves the machine. ``publish`` then
uploads with ``huggingface_hub``; the token comes from the standard login or ``HF_TOKEN`` and is
never printed or written into the folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from string import Template

import pandas as pd
import yaml

from .errors import ConfigError, CrystextError
from .lineage import lineage_entry
from .resources import resource_dir

#: the card template (package data; ``model_cards/template.md`` in the repository)
CARD_TEMPLATE = resource_dir("model_cards") / "template.md"
#: files of a run folder that travel to the Hub when present
RUN_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "training_config.json",
    "eval.json",
    "generation.json",
    "log.csv",
    "loss.png",
    "corpus_summary.json",
    "corpus_identity.json",
    "corpus_identity.json.gz",
)
#: what a fine-tuned folder adds to a release
FINETUNE_FILES = ("test_predictions.csv",)
#: the baselines a card compares against, when the benchmark has them
CARD_BASELINES = ("magpie", "mat2vec", "crystallm", "skipatom", "megnet16", "oliynyk", "random_200",
                  "chgnet", "cgcnn", "ace")


class HubError(CrystextError, RuntimeError):
    """Exporting, verifying or uploading a release failed."""


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _count_params(run: Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(run / "model.safetensors"), framework="pt") as fh:
        for key in fh.keys():
            shape = fh.get_slice(key).get_shape()
            n = 1
            for d in shape:
                n *= d
            total += n
    return total


def benchmark_tables(results: pd.DataFrame, representation: str,
                     selected: pd.DataFrame | None = None) -> tuple[str, list[dict]]:
    """Markdown table (tasks x representations) and model-index entries for ``representation``.

    Every representation is shown at the setting (pooling x regressor x layer) picked on its
    *validation* MAE; the cell is the test MAE of that setting only, mean ± std over seeds (and
    folds). Bold marks every representation ranked first with ties counted (differences within
    the noise). ``selected``: the benchmark's ``selected.csv`` (bootstrap ranks); without it the
    picks are recomputed from ``results`` with seed-noise ranks.
    """
    from .benchmark.selection import selected_settings
    from .benchmark.structures import TRAINED_ON_TARGET

    if results is None or "val_mae" not in set(results.metric):
        return ("Benchmark results predate validation picking (no `val_mae` rows); rerun "
                "`crystext benchmark`.", [])
    best = selected if selected is not None else selected_settings(results)
    if best.empty or representation not in set(best.representation):
        return "No benchmark results for this model yet.", []
    reps = [representation] + [r for r in CARD_BASELINES if r in set(best.representation)]
    tasks = sorted(set(best[best.representation == representation].task))
    lines = [
        "Test MAE, mean ± std over seeds (and folds; no ± for a single deterministic fit), each representation at the pooling and regressor "
        "(ridge, HistGradientBoosting, MLP) picked on its validation MAE, under the same protocol; lower "
        "is better. Bold: ranked first, differences within the noise counted as ties.",
        "",
        "| task | " + " | ".join(reps) + " |",
        "|---|" + "---|" * len(reps),
    ]
    index: list[dict] = []
    for task in tasks:
        rows = best[best.task == task].drop_duplicates("representation").set_index("representation")
        cells = []
        for r in reps:
            if r not in rows.index:
                cells.append("–")
                continue
            std = rows.loc[r, "test_std"]  # NaN: one deterministic fit, no spread to show
            single = pd.isna(std) or int(rows.loc[r].get("n", 2)) < 2
            cell = f"{rows.loc[r, 'test_mae']:.4g}" + ("" if single else f" ± {std:.2g}")
            if (r, task.split("/")[0]) in TRAINED_ON_TARGET:
                cell += " †"
            cells.append(f"**{cell}**" if int(rows.loc[r, "rank"]) == 1 else cell)
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
        ours = rows.loc[representation]
        index.append(
            {
                "task": {"type": "tabular-regression", "name": f"{task} (test MAE)"},
                "dataset": {"name": task, "type": task.split("/")[0]},
                "metrics": [
                    {
                        "type": "mae",
                        "value": round(float(ours["test_mae"]), 6),
                        "name": f"test MAE ({ours['pooling']} pooling, {ours['regressor']}; picked on validation)",
                    }
                ],
            }
        )
    marked = sorted({TRAINED_ON_TARGET[(r, t.split("/")[0])] for t in tasks for r in reps
                     if (r, t.split("/")[0]) in TRAINED_ON_TARGET})
    if marked:
        lines += ["", "† " + "; ".join(marked) + "."]
    return "\n".join(lines), index


def _train_time(train_cfg: dict) -> tuple[float | None, str]:
    """Training wall time for the card, and how to label it (a resumed run may know only its
    last session's time)."""
    total, last = train_cfg.get("train_time_s"), train_cfg.get("train_time_s_this_session")
    sessions = int(train_cfg.get("sessions") or 0)
    # a resumed run that counts 1 session resumed a checkpoint from before sessions were recorded:
    # its total is then only the last session's time
    if total is not None and (sessions > 1 or not train_cfg.get("resumed_from")):
        return float(total), "training wall time" + (f" ({sessions} sessions)" if sessions > 1 else "")
    if last is None:
        return None, ""
    if train_cfg.get("resumed_from"):
        return float(last), f"training wall time since the last resume (from {train_cfg['resumed_from']})"
    return float(last), "training wall time"


def _lineage_table(run: Path, train_cfg: dict) -> list[str]:
    """Markdown lines: every run of the chain this one was trained in (earliest first, this run
    last) with its corpus, steps, tokens and wall time, and the tokens of the whole chain."""
    rows = list(train_cfg["lineage"]) + [lineage_entry(run, train_cfg)]
    fmt = lambda v, f="{:,}": "" if v is None else f.format(v)  # noqa: E731
    lines = ["Training history (each run trained from the one above it; earliest first):", "",
             "| run | corpus | training documents | steps | tokens | epochs | wall time | precision |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for i, r in enumerate(rows):
        secs = r.get("train_time_s")
        lines.append(f"| {r.get('run')}{' (this run)' if i == len(rows) - 1 else ''} | {r.get('corpus') or ''} | {fmt(r.get('train_documents'))} | "
                     f"{fmt(r.get('steps'))} | {fmt(r.get('tokens'))} | {fmt(r.get('epochs'), '{}')} | "
                     f"{'' if secs is None else f'{secs / 60:.0f} min'} | {r.get('precision') or ''} |")
    total = sum(int(r.get("tokens") or 0) for r in rows)
    lines += ["", f"Tokens over the runs listed: {total:,}."]
    return lines


#: licences of the corpus sources a card names, matched by substring of the source name
_SOURCE_LICENCES = {
    "perov_5": "MIT (CDVAE release; Castelli et al.)",
    "carbon_24": "MIT (CDVAE release; Pickard, AIRSS)",
    "aflow-prototypes": "pymatgen (MIT); AFLOW prototype library (Mehl et al. 2017)",
    "matbench": "MIT (Matbench; Materials Project data CC-BY 4.0)",
}
#: training settings a card lists, in this order (``train_time_s`` is labelled by ``_train_time``)
_CARD_HYPERPARAMETERS = (
    "preset", "steps", "max_steps", "tokens", "epochs", "global_batch", "world_size", "learning_rate",
    "min_learning_rate", "warmup_steps", "betas", "weight_decay", "grad_clip", "dropout",
    "mixed_precision", "seed", "train_time_s", "hardware",
)


def _benchmark_paths(benchmark: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """The ``results.csv`` of each benchmark folder or CSV in ``benchmark`` (one or a sequence)."""
    if benchmark is None:
        return []
    items = [benchmark] if isinstance(benchmark, (str, Path)) else list(benchmark)
    paths = []
    for item in items:
        path = Path(item)
        path = path / "results.csv" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"{path}: benchmark results not found")
        paths.append(path)
    return paths


def read_benchmarks(benchmark: str | Path | Sequence[str | Path]
                    ) -> tuple[pd.DataFrame, pd.DataFrame | None, dict[str, Path]]:
    """Results and selected settings of one or more benchmark outputs, with the folder each task
    comes from. A later output's tasks replace an earlier one's rows of the same tasks (a rerun of
    some tasks, e.g. rebuilt probes, beside a full run). ``selected`` is None unless every output
    has its ``selected.csv`` (the picks are then recomputed from the results)."""
    results, selected, origin = [], [], {}
    for path in _benchmark_paths(benchmark):
        res = pd.read_csv(path)
        tasks = set(res["task"])
        results = [r[~r["task"].isin(tasks)] for r in results] + [res]
        sel_path = path.parent / "selected.csv"
        if selected is not None and sel_path.is_file():
            sel = pd.read_csv(sel_path)
            selected = [x[~x["task"].isin(tasks)] for x in selected] + [sel]
        else:
            selected = None
        origin.update(dict.fromkeys(sorted(tasks), path.parent))
    if not results:
        raise ConfigError("no benchmark results given")
    merged_sel = pd.concat(selected, ignore_index=True) if selected else None
    return pd.concat(results, ignore_index=True), merged_sel, origin


def _benchmark_section(benchmark: str | Path | Sequence[str | Path] | None,
                       representation: str) -> tuple[str, list[dict]]:
    """The card's benchmark Markdown and model-index entries, from one or more benchmark outputs."""
    if benchmark is None:
        return "No benchmark results yet.", []
    results, selected, origin = read_benchmarks(benchmark)
    bench_md, model_index = benchmark_tables(results, representation, selected)
    if model_index:
        used = set(origin.values())
        folders = [path.parent for path in _benchmark_paths(benchmark) if path.parent in used]  # as given
        source = f"`{folders[0]}`" + "".join(
            f"; {', '.join(sorted(t for t, f in origin.items() if f == folder))} from `{folder}`"
            for folder in folders[1:])
        bench_md += f"\n\nFull results: `benchmark_results.csv` in this repository (from {source})."
    return bench_md, model_index


def _corpus_sources(corpus: dict, train_cfg: dict) -> tuple[dict, list]:
    """Documents per corpus source (empty when not recorded) and the source names."""
    per_source = corpus.get("per_source") or {
        name: v.get("documents") for name, v in (corpus.get("sources") or {}).items() if isinstance(v, dict)}
    return per_source, list(per_source) or train_cfg.get("sources") or []


def _training_data_section(corpus: dict, per_source: dict, sources: list) -> str:
    """The card's training-data Markdown: a table of corpus sources and splits, or their names."""
    data_lines = []
    if per_source:
        kinds = {name: v.get("kind", "") for name, v in (corpus.get("sources") or {}).items() if isinstance(v, dict)}
        data_lines.append("| source | kind | documents | licence |")
        data_lines.append("|---|---|---|---|")
        for name, count in per_source.items():
            lic = next((v for k, v in _SOURCE_LICENCES.items() if k in name), "see source")
            kind = {"header": "header only (composition + space group)"}.get(kinds.get(name, ""), kinds.get(name, ""))
            data_lines.append(f"| {name} | {kind} | {count:,} | {lic} |" if isinstance(count, int)
                              else f"| {name} | {kind} | {count} | {lic} |")
        for key, value in (corpus.get("splits") or {}).items():
            if isinstance(value, dict):
                value = f"{value.get('documents', 0):,} documents, {value.get('tokens', 0):,} tokens"
            data_lines.append(f"| split `{key}` | | {value} | |")
        if corpus.get("command"):
            data_lines += ["", f"Corpus built by `{corpus['command']}`."]
        data_lines += _exclusion_lines(corpus.get("excluded_held_out"))
    elif sources:
        data_lines.append(", ".join(map(str, sources)))
    training_data = "\n".join(data_lines) or "Not recorded in the run folder."
    return training_data + "\n\nTargets (properties) are never part of the pretraining text."


def _exclusion_lines(excluded: dict | None) -> list[str]:
    """The card's sentence on benchmark structures removed from the corpus (``crystext corpus exclude``)."""
    if not excluded:
        return []
    removed = {split: sum(per_task.values()) for split, per_task in (excluded.get("removed") or {}).items()}
    tasks = sorted({task for per_task in (excluded.get("removed") or {}).values() for task in per_task})
    return ["", f"Then `crystext corpus exclude` removed every document whose structure is a validation or test "
            f"structure of a benchmark task ({excluded.get('held_out_structures', 0):,} checked): "
            + ", ".join(f"{n} from `{split}`" for split, n in removed.items())
            + (f" ({', '.join(tasks)})" if tasks else "") + "; the split counts above are after it."]


def _training_section(run: Path, train_cfg: dict) -> str:
    """The card's training Markdown: initialisation, settings, software, lineage, loss curve."""
    train_lines = []
    if train_cfg.get("init"):
        train_lines.append(f"- initialised from: `{train_cfg['init']}` (its training data came first; "
                           "the table above is this run's own corpus)")
    hyper = {**train_cfg.get("training", {}), **train_cfg}
    for key in _CARD_HYPERPARAMETERS:
        if key == "train_time_s":
            seconds, label = _train_time(train_cfg)
            if seconds is not None:
                train_lines.append(f"- {label}: {seconds:.0f} s ({seconds / 60:.0f} min)")
            continue
        if key in hyper and not isinstance(hyper[key], dict):
            train_lines.append(f"- {key.replace('_', ' ')}: {hyper[key]}")
    if train_cfg.get("versions"):
        train_lines.append("- software: " + ", ".join(f"{k} {v}" for k, v in train_cfg["versions"].items()))
    if train_cfg.get("lineage"):
        train_lines += ["", *_lineage_table(run, train_cfg)]
    if (run / "loss.png").is_file():
        train_lines.append("\n![loss curve](loss.png)")
    return "\n".join(train_lines) or "Not recorded in the run folder."


def _validity_table(gen: dict) -> list[str]:
    """Markdown lines: validity of sampled text per prompt set (``benchmarks/generation/validity.py``)."""
    sets, intervals = gen["prompt_sets"], gen.get("intervals", {})
    checks = [c for c in next(iter(sets.values())) if c != "n"]
    sampler = f"top-k {gen.get('top_k') or 'off'}" + (f", top-p {gen['top_p']:g}" if gen.get("top_p", 1) < 1 else "")
    lines = ["", f"Validity of sampled text (temperature {gen.get('temperature')}, {sampler}, "
             "full structures; fractions of the samples):", "",
             "| prompts | samples | " + " | ".join(c.replace("_", " ") for c in checks)
             + (" | valid, 95 % interval" if intervals else "") + " |",
             "|---|---|" + "---|" * (len(checks) + bool(intervals))]
    for label, row in sets.items():
        span = intervals.get(label, {}).get("valid")
        lines.append(f"| {label} | {row.get('n', '')} | " + " | ".join(f"{row[c]:.3f}" for c in checks)
                     + (f" | {span[0]:.3f}-{span[1]:.3f}" if span else " | " if intervals else "") + " |")
    if gen.get("command"):
        lines += ["", f"Made by `{gen['command']}`."]
    return lines


def _learned_section(evals: dict, gen: dict) -> str:
    """The card's evaluation Markdown: held-out metrics and the validity of sampled text."""
    learned = []
    for key, value in evals.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k.replace('_', ' ')} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in value.items())
        learned.append(f"- {key.replace('_', ' ')}: {value:.4f}" if isinstance(value, float)
                       else f"- {key.replace('_', ' ')}: {value}")
    if gen.get("prompt_sets"):
        learned += _validity_table(gen)
    elif gen:
        for key, value in gen.items():
            if isinstance(value, (int, float, str)):
                learned.append(f"- samples {key.replace('_', ' ')}: {value}")
    return "\n".join(learned) or "No evaluation recorded."


def _card_metadata(corpus: dict, sources: list, repo_id: str, license: str, model_index: list[dict]) -> str:
    """The card's YAML metadata block (library, tags, datasets, model index)."""
    metadata: dict = {
        "library_name": "transformers",
        "pipeline_tag": "feature-extraction",
        "license": license,
        "tags": ["materials", "crystal-structure", "cif", "crystallography", "crystext"],
        "datasets": [str(s) for s in (corpus.get("per_source") or {})] or [str(s) for s in sources],
    }
    if model_index:
        metadata["model-index"] = [{"name": repo_id.split("/")[-1], "results": model_index}]
    return yaml.safe_dump(metadata, sort_keys=False).strip()


def render_card(run: str | Path, repo_id: str, benchmark: str | Path | Sequence[str | Path] | None = None,
                template: str | Path | None = None, license: str = "mit") -> str:
    """Write the model card of a run as Markdown with YAML metadata, from the run's own files.

    ``benchmark`` is a benchmark output folder (holding ``results.csv``) or the CSV itself, or a
    sequence of them whose later entries replace the earlier ones' rows of the tasks they ran
    (:func:`read_benchmarks`).
    """
    run = Path(run)
    config = _read_json(run / "config.json")
    if not config:
        raise ConfigError(f"{run}: not a run folder (no config.json)")
    train_cfg = _read_json(run / "training_config.json")
    corpus = _read_json(run / "corpus_summary.json") or train_cfg.get("corpus_summary", {})
    tok_cfg = _read_json(run / "tokenizer_config.json")
    vocab = len(_read_json(run / "tokenizer.json").get("model", {}).get("vocab", {})) or config.get("vocab_size")
    # the benchmark names a run `crystext-<name>`; a run folder may already carry the prefix
    short = run.name[len("crystext-"):] if run.name.startswith("crystext-") else run.name
    bench_md, model_index = _benchmark_section(benchmark, f"crystext-{short}")
    per_source, sources = _corpus_sources(corpus, train_cfg)

    n_params = _count_params(run) if (run / "model.safetensors").is_file() else 0
    text = Template(Path(template or CARD_TEMPLATE).read_text())
    n_pos = config.get("n_positions", 0)
    return text.substitute(
        metadata=_card_metadata(corpus, sources, repo_id, license, model_index),
        title=repo_id.split("/")[-1],
        repo_id=repo_id,
        d_model=config.get("n_embd", "?"),
        n_layer=config.get("n_layer", "?"),
        n_head=config.get("n_head", "?"),
        n_positions=n_pos,
        n_params=_fmt_params(n_params) if n_params else "?",
        dtype=(f"{train_cfg['saved_dtype']}, loads as {train_cfg.get('loads_as', 'float32')}"
               if train_cfg.get("saved_dtype") not in (None, "float32")
               else config.get("dtype") or config.get("torch_dtype") or "float32"),
        tokenizer_name=tok_cfg.get("name_or_path") or (corpus.get("config") or {}).get("tokenizer")
        or train_cfg.get("tokenizer", "crystext"),
        vocab_size=vocab,
        tokenizer_note="`<bos>`/`<eos>`/`<pad>`/`<unk>`; every element, space group and CIF keyword a token",
        max_sites=max(1, (n_pos - 150) // 25) if n_pos else "?",
        training_data=_training_data_section(corpus, per_source, sources),
        training=_training_section(run, train_cfg),
        learned=_learned_section(_read_json(run / "eval.json"), _read_json(run / "generation.json")),
        benchmarks=bench_md,
    )


#: the check run in a fresh process on an exported folder: load the model with the Auto class and
#: the pipeline a user would use, run it on rock salt, read the card's metadata
_VERIFY = r"""
import json, sys, os
os.environ["HF_HUB_OFFLINE"] = "1"
folder, kind = sys.argv[1], sys.argv[2]
import transformers
import crystext
from huggingface_hub import ModelCard
from pymatgen.core import Lattice, Structure
auto = transformers.AutoModelForSequenceClassification if kind == "finetuned" else transformers.AutoModelForCausalLM
model = auto.from_pretrained(folder, use_safetensors=True)
tok = transformers.AutoTokenizer.from_pretrained(folder)
nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
info = {"n_params": sum(p.numel() for p in model.parameters()), "vocab": len(tok)}
if kind == "finetuned":
    assert model.config.num_labels == 1 and model.config.problem_type == "regression", model.config
    out = transformers.pipeline("crystal-property", model=folder)(nacl)
    info.update(prediction=float(out["value"]), target=out.get("target"))
else:
    info["embedding_dim"] = int(transformers.pipeline("crystal-embedding", model=folder)(nacl).shape[-1])
meta = ModelCard.load(os.path.join(folder, "README.md")).data.to_dict()
assert meta.get("library_name") == "transformers", meta
print(json.dumps({**info, "card_tags": meta.get("tags", [])}))
"""


def verify_export(folder: str | Path, timeout: int = 600) -> dict:
    """Load an exported folder back in a fresh process with ``HF_HUB_OFFLINE=1``:
    ``AutoModelForCausalLM``, ``AutoTokenizer``, ``pipeline("crystal-embedding")`` and the card's
    metadata through ``huggingface_hub.ModelCard`` (for a fine-tuned folder
    ``AutoModelForSequenceClassification`` and ``pipeline("crystal-property")`` instead). Also
    refuses pickles. Raises :class:`HubError`."""
    folder = Path(folder)
    pickles = [p.name for p in folder.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".ckpt"}]
    if pickles:
        raise HubError(f"{folder}: pickle files would be published ({', '.join(pickles)}); only safetensors are allowed")
    from .finetune import is_finetuned

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _VERIFY, str(folder), "finetuned" if is_finetuned(folder) else "pretrained"],
        capture_output=True, text=True, env=env, timeout=timeout
    )
    if proc.returncode != 0:
        raise HubError(f"{folder}: the exported folder does not load back offline:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def export_for_hub(run: str | Path, out: str | Path, repo_id: str,
                   benchmark: str | Path | Sequence[str | Path] | None = None,
                   verify: bool = True, overwrite: bool = False) -> Path:
    """Assemble and (by default) verify a Hub-ready folder for ``run`` in ``out``.

    A pretrained run gets its element vectors (``element_embeddings.csv``), the benchmark tables
    and the pretraining card; a fine-tuned folder (``crystext finetune``) its task card, metrics
    and test predictions, and is verified as a sequence-regression model.
    """
    from .finetune import is_finetuned

    run, out = Path(run), Path(out)
    if not (run / "model.safetensors").is_file():
        raise ConfigError(f"{run}: no model.safetensors (only safetensors weights are published)")
    finetuned = is_finetuned(run)
    if finetuned and benchmark is not None:
        raise ConfigError(f"{run}: a fine-tuned folder's card carries its own task metrics; "
                          "benchmark tables are for pretrained runs (leave out --benchmark)")
    if "/" not in repo_id or repo_id.count("/") != 1:
        raise ConfigError(f"repo id {repo_id!r} must look like OWNER/NAME")
    if out.exists() and not overwrite and any(out.iterdir()):
        raise ConfigError(f"{out}: export folder exists and is not empty (pass overwrite=True)")
    from .atomic import atomic_path, check_model_folder

    check_model_folder(run)  # a truncated weights file is never published
    # assembled and verified under a temporary name beside out, renamed into place only when complete
    with atomic_path(out, folder=True) as tmp:
        _assemble_export(run, tmp, repo_id, benchmark, finetuned, verify)
    return out


def _assemble_export(run: Path, out: Path, repo_id: str, benchmark: str | Path | Sequence[str | Path] | None,
                     finetuned: bool, verify: bool) -> Path:
    """The files of :func:`export_for_hub`, written into the (empty) folder ``out``."""
    from .embeddings import element_embeddings, save_element_csv

    for name in RUN_FILES + (FINETUNE_FILES if finetuned else ()):
        if (run / name).is_file():
            shutil.copy2(run / name, out / name)
    if finetuned:
        from .finetune import render_finetune_card

        (out / "README.md").write_text(render_finetune_card(run, _read_json(run / "eval.json"), repo_id=repo_id))
        if verify:
            verify_export(out)
        return out
    save_element_csv(element_embeddings(run), out / "element_embeddings.csv")
    if benchmark is not None:
        results, _, _ = read_benchmarks(benchmark)
        results.to_csv(out / "benchmark_results.csv", index=False)
        for i, src in enumerate(_benchmark_paths(benchmark)):
            report = src.parent / "report.md"
            if report.is_file():
                shutil.copy2(report, out / ("benchmark_report.md" if i == 0 else f"benchmark_report_{i + 1}.md"))
    (out / "README.md").write_text(render_card(run, repo_id, benchmark))
    if verify:
        verify_export(out)
    return out


#: the HTTP stacks huggingface_hub has used (requests, httpx and its forks); their connection and
#: timeout errors do not all derive from OSError
_TRANSPORT_MODULES = ("requests", "urllib3", "httpx", "httpcore", "h11", "h2", "anyio")


def _is_transport_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the HTTP stack (no network, DNS failure, timeout, TLS)."""
    return any(cls.__module__.split(".")[0].rstrip("0123456789") in _TRANSPORT_MODULES
               for cls in type(exc).__mro__)


def publish(run: str | Path, repo_id: str, *, export_dir: str | Path | None = None,
            benchmark: str | Path | Sequence[str | Path] | None = None, private: bool = False,
            revision: str | None = None, commit_message: str | None = None, token: str | None = None, export_only: bool = False) -> str:
    """Export, verify offline, then upload ``run`` to ``repo_id`` on the Hub. Returns the folder
    path when ``export_only`` else the commit URL. A network failure raises :class:`HubError`
    and leaves the verified local folder intact."""
    import tempfile

    folder = Path(export_dir) if export_dir else Path(tempfile.mkdtemp(prefix="crystext-export-"))
    export_for_hub(run, folder, repo_id, benchmark, overwrite=export_dir is None)
    if export_only:
        return str(folder)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)  # None -> HF_TOKEN or the stored login
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            revision=revision,
            commit_message=commit_message or f"crystext release of {Path(run).name}",
        )
    except Exception as exc:  # noqa: BLE001 - narrowed just below
        if not (isinstance(exc, (HfHubHTTPError, OSError, ValueError)) or _is_transport_error(exc)):
            raise
        raise HubError(
            f"upload of {folder} to {repo_id} failed ({type(exc).__name__}: {exc}); "
            f"the verified folder is intact at {folder}"
        ) from None
    return str(getattr(info, "commit_url", info))
