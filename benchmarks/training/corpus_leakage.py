"""Is any benchmark split, validation included, in a pretraining corpus?

For every structure task of the shared data (perov_5, carbon_24 and the four MP structure tasks)
and each of its held-out splits (``val`` and ``test``; the fold tasks' ``test{k}`` files, which
together hold every row, stand for both), counts the rows found in the corpus of each run given:

- ``structures``: the row's canonical text (SHA-1, at the corpus' symprec) is a corpus document;
- ``formula_spacegroup``: a corpus document has the row's reduced formula and space group (a
  polymorph of the same formula in the same group counts: an upper bound, not an identity);
- ``formulas``: a corpus document has the row's reduced formula (composition only);

and, once for the data, how many held-out rows of the MP tasks have a Materials Project id found in
the shared MP structure tables (the source of every MP corpus; the data's README says none).

The identities come from each run's shipped corpus identity or, for a corpus folder not yet trained
on, from the corpus itself (:func:`crystext.corpus.identity.identity_of_corpus`).

    python benchmarks/training/corpus_leakage.py \\
        --runs models/crystext-base models/crystext-compact models/crystext-mp corpora/mp-pair corpora/mp-pair-clean \\
        --md benchmarks/training/corpus_leakage.md --json benchmarks/training/corpus_leakage.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

from crystext.tasks import SHARED_STRUCTURE_TASKS, held_out_tables

sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision import cpu_name  # noqa: E402  (the sibling script's CPU model name)



def identity_of(path: Path, data: Path) -> tuple[dict, str]:
    """(identity, where it came from) of a run folder (its corpus and its init runs', as the
    benchmark's leakage table reads them) or of a corpus folder not yet trained on."""
    from crystext.corpus.identity import identity_of_corpus, read_identity

    if not (path / "dataset_dict.json").is_file():
        from crystext.benchmark.leakage import corpus_identity
        from crystext.settings import cache_dir

        ident = corpus_identity(path, cache_dir() / "benchmark", data)
        symprec = float((read_identity(path) or {}).get("symprec", 0.1))
        return ({"formulas": ident.formulas, "structures": ident.structures, "pairs": ident.formula_spacegroup,
                 "symprec": symprec}, ident.status)
    from datasets import load_from_disk

    dd = load_from_disk(str(path))
    ident = identity_of_corpus(dd[sp] for sp in dd)
    summary = path / "summary.json"
    config = json.loads(summary.read_text()).get("config", {}) if summary.is_file() else {}
    return ({"formulas": set(ident["formulas"]), "structures": set(ident["structures"]),
             "pairs": {(f, int(g)) for f, g in ident["formula_spacegroup"]},
             "symprec": float(config.get("symprec", 0.1))}, "the corpus folder")


def corpus_material_ids(data: Path) -> set[str]:
    """Materials Project ids of the shared MP structure tables (the MP corpus' sources)."""
    ids: set[str] = set()
    for table in sorted((data / "mp").glob("structures-*.parquet")):
        ids |= set(pd.read_parquet(table, columns=["material_id"])["material_id"].astype(str))
    return ids


def row_identities(cifs: list[str], symprec: float, cache_dir: Path, n_jobs: int) -> list[tuple | None]:
    """(text hash, reduced formula, space group) of each CIF (None where it cannot be converted)."""
    from crystext.benchmark.leakage import _spacegroup_of_text
    from crystext.benchmark.representations import structure_texts
    from crystext.corpus.identity import reduced_formula, text_hash

    texts, _ = structure_texts(cifs, cache_dir, symprec=symprec, n_jobs=n_jobs)
    out = []
    for t in texts:
        if t is None:
            out.append(None)
            continue
        first = t.split("\n", 1)[0]  # data_<cell formula>
        out.append((text_hash(t), reduced_formula(first.removeprefix("data_")), _spacegroup_of_text(t)))
    return out


def count(rows: list[tuple | None], ident: dict) -> dict:
    """Rows of one split found in one corpus, by each identity."""
    ok = [r for r in rows if r is not None]
    return {"rows": len(rows), "converted": len(ok),
            "structures": sum(h in ident["structures"] for h, _, _ in ok),
            "formula_spacegroup": sum((f, g) in ident["pairs"] for _, f, g in ok),
            "formulas": sum(f in ident["formulas"] for _, f, _ in ok)}


def markdown(result: dict) -> str:
    """The report: one table per run."""
    lines = ["# Benchmark splits in pretraining corpora", "", "Command:", "", "```", result["command"], "```", "",
             f"Machine: {result['cpu']}; {result['seconds']:.0f} s. Data: `{result['data']}`.", "",
             "Counts of held-out rows (validation and test) found in each run's pretraining corpus. "
             "`structures`: the canonical text is a corpus document (the identity the benchmark's leakage table "
             "uses); `formula + space group`: some corpus document has both (an upper bound: polymorphs count); "
             "`formulas`: composition only.", "",
             f"Held-out rows of the MP tasks whose Materials Project id is in the shared MP structure tables: "
             f"{result['mp_ids_found']} of {result['mp_held_out_rows']}.", ""]
    for run, part in result["runs"].items():
        lines += [f"## {run} ({part['identity']})", "",
                  "| task | split | rows | converted | structures | formula + space group | formulas |",
                  "|---|---|---|---|---|---|---|"]
        for r in part["rows"]:
            lines.append(f"| {r['task']} | {r['split']} | {r['rows']} | {r['converted']} | {r['structures']} | "
                         f"{r['formula_spacegroup']} | {r['formulas']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="run folders (with a corpus identity) or corpus folders")
    p.add_argument("--data", help="shared data folder (default $CRYSTEXT_DATA or ../shared/data)")
    p.add_argument("--tasks", nargs="+", default=list(SHARED_STRUCTURE_TASKS))
    p.add_argument("--n-jobs", type=int, default=1)
    p.add_argument("--md", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    from crystext.settings import cache_dir, data_dir

    data = Path(args.data) if args.data else data_dir()
    start = time.perf_counter()
    mp_ids = corpus_material_ids(data)
    idents = {Path(r).name: identity_of(Path(r), data) for r in args.runs}
    result = {"command": "python benchmarks/training/corpus_leakage.py " + shlex.join(sys.argv[1:] if argv is None else argv),
              "cpu": cpu_name(), "data": str(data), "runs": {}}
    rows_by_prec: dict = {}
    held = [df for task in args.tasks if task.startswith("mp_") for df in held_out_tables(data / task).values()]
    held_ids = [str(i) for df in held if "material_id" in df for i in df["material_id"]]
    result["mp_held_out_rows"], result["mp_ids_found"] = len(held_ids), sum(i in mp_ids for i in held_ids)
    for name, (ident, source) in idents.items():
        rows = []
        for task in args.tasks:
            for split, df in held_out_tables(data / task).items():
                key = (task, split, ident["symprec"])
                if key not in rows_by_prec:
                    rows_by_prec[key] = row_identities(df["cif"].astype(str).tolist(), ident["symprec"],
                                                       cache_dir() / "benchmark", args.n_jobs)
                rows.append({"task": task, "split": split, **count(rows_by_prec[key], ident)})
        result["runs"][name] = {"identity": source, "rows": rows}
    result["seconds"] = time.perf_counter() - start
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    if args.md:
        args.md.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
