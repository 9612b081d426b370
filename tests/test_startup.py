"""Fast start: ``import crystext`` and ``crystext --help`` load neither torch nor transformers; the
pipeline tasks are registered whichever of crystext and transformers is imported first; the CLI
exits 2 on crystext errors and 130 on Ctrl-C, without a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "datasets", "tokenizers", "accelerate", "pandas", "sklearn",
         "pymatgen", "spglib", "ase", "matplotlib", "pyarrow", "scipy")


def _python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line last."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         cwd=REPO, timeout=600, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _env() -> dict:
    import os

    env = dict(os.environ)
    env.pop("CRYSTEXT_CLI", None)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["HF_HUB_OFFLINE"] = "1"
    return env


_LOADED = f"""
import json, sys
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
print(json.dumps({{"heavy": heavy}}))
"""


def test_import_crystext_is_light():
    got = _python("import crystext\ncrystext.__version__\n" + _LOADED)
    assert got["heavy"] == []


def test_help_of_the_command_and_of_every_verb_is_light():
    got = _python(textwrap.dedent("""
        import contextlib, io, sys
        from crystext.cli import build_parser, main
        verbs = sorted(build_parser()._subparsers._group_actions[0].choices)
        for argv in [["--help"], []] + [[v, "--help"] for v in verbs]:
            with contextlib.redirect_stdout(io.StringIO()) as out:
                try:
                    main(argv)
                except SystemExit:
                    pass
            assert "usage: crystext" in out.getvalue(), argv
    """) + _LOADED.replace('{"heavy": heavy}', '{"heavy": heavy, "verbs": verbs}'))
    assert got["heavy"] == []
    assert {"corpus", "embed", "pretrain", "text", "tokenizer"} <= set(got["verbs"])


_REGISTERED = """
import json, sys
from transformers.pipelines import PIPELINE_REGISTRY
import crystext.pipeline as cp
tasks = PIPELINE_REGISTRY.get_supported_tasks()
module = sys.modules["transformers.pipelines"]
res = {
    "embedding": "crystal-embedding" in tasks,
    "impl": PIPELINE_REGISTRY.supported_tasks["crystal-embedding"]["impl"] is cp.CrystalEmbeddingPipeline,
    "loader": type(module.__loader__).__name__,
    "hooks": [type(f).__name__ for f in sys.meta_path if "Pipeline" in type(f).__name__],
}
"""


_EMBED = """
from pymatgen.core import Lattice, Structure
pipe = pipeline("crystal-embedding", model=MODEL, device="cpu")
s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
v = pipe(s)
res.update(shape=list(v.shape), finite=bool((v == v).all()))
"""


@pytest.mark.parametrize("first", ["crystext", "transformers"])
def test_pipeline_tasks_registered_in_either_import_order(first):
    imports = ("import crystext\nfrom transformers import pipeline\n" if first == "crystext"
               else "from transformers import pipeline\nimport crystext\n")
    model = REPO / "models" / "crystext-compact"
    # the task registered by the import hook really runs (the other order is test_pipeline's)
    embed = first == "crystext" and (model / "config.json").is_file()
    code = imports + _REGISTERED + (f"MODEL = {str(model)!r}\n" + _EMBED if embed else "")
    got = _python(code + "print(json.dumps(res))\n")
    assert got["embedding"] and got["impl"]
    assert got["loader"] == "SourceFileLoader" and got["hooks"] == []  # the hook leaves no trace
    if embed:
        assert got["finite"] and len(got["shape"]) == 1 and got["shape"][0] > 0


# ----------------------------------------------------------------------------- CLI exits


def test_cli_error_is_one_line_exit_2_naming_file_and_flag(tmp_path, capsys):
    from pymatgen.core import Lattice, Structure

    from crystext.cli import main

    empty = tmp_path / "empty.cif"
    empty.write_text("")
    assert main(["text", "convert", str(empty)]) == 2
    assert capsys.readouterr().err.strip() == f"crystext text: error: {empty}: the file is empty"

    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    s.replace_species({"Na": {"Na": 0.5, "K": 0.5}})
    dis = tmp_path / "dis.cif"
    dis.write_text(s.to(fmt="cif"))
    assert main(["text", "convert", str(dis)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"crystext text: error: {dis}: site 0 is partially occupied")
    assert "--disorder dominant" in err and "disorder='dominant'" not in err

    assert main(["text", "convert", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["text", "convert", str(tmp_path / "absent.cif")]) == 2
    assert "absent.cif: no such file" in capsys.readouterr().err


def test_cli_ctrl_c_exits_130_without_traceback(tmp_path, monkeypatch, capsys):
    import crystext.text
    from crystext.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(crystext.text, "structure_to_text", interrupted)
    assert main(["text", "convert", str(tmp_path / "x.cif")]) == 130
    err = capsys.readouterr().err
    assert "crystext text: interrupted" in err and "Traceback" not in err


def test_cli_mode_is_on_only_while_a_verb_runs(tmp_path, monkeypatch):
    import crystext.text
    from crystext.cli import main
    from crystext.inputs import in_cli

    seen = []
    monkeypatch.setattr(crystext.text, "structure_to_text", lambda *a, **k: seen.append(in_cli()) or "")
    assert main(["text", "convert", str(tmp_path / "x.cif")]) == 0
    assert seen == [True] and not in_cli()
