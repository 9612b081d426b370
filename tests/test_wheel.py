"""The wheel works outside the repository: build it, install it (no deps) into a fresh venv that
sees the torch/transformers of the interpreter running the tests (the system's, or the virtual
environment's where the README's test command runs inside one), and run the main entry points from
a temporary folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SMOKE = textwrap.dedent('''
    import json, subprocess, sys
    from pathlib import Path

    import crystext
    from crystext.modeling import PRESET_DIR, list_presets, load_preset
    from crystext.resources import resource_dir
    from crystext.tokenization import builtin_dir, load_tokenizer

    site = Path(sys.argv[1]).resolve()
    here = Path.cwd()
    assert Path(crystext.__file__).resolve().is_relative_to(site), crystext.__file__  # the wheel's copy
    for kind in ("presets", "accelerate", "tokenizers", "model_cards"):
        assert resource_dir(kind).resolve().is_relative_to(site), (kind, resource_dir(kind))
    assert PRESET_DIR.resolve().is_relative_to(site) and list_presets() == ["base", "cpu", "crystallm-small", "tiny"]
    assert load_preset("base")["model"]["n_embd"] == 512
    assert builtin_dir("crystext-cif").resolve().is_relative_to(site)
    assert len(load_tokenizer("crystext-cif")) > 100

    def cli(*args, ok=(0,)):
        done = subprocess.run([sys.executable, "-m", "crystext", *args], capture_output=True, text=True)
        assert done.returncode in ok, (args, done.returncode, done.stderr[-2000:])
        return done

    assert "pretrain" in cli("--help").stdout
    cli("tokenizer", "build", "--kind", "cif", "--out", "tok")
    assert (here / "tok" / "tokenizer.json").is_file()
    cli("corpus", "build", "aflow-prototypes", "--limit", "24", "--out", "corpus", "--quiet")
    cli("pretrain", "tiny", "--corpus", "corpus", "--out", "run", "--max-steps", "2", "--no-progress",
        "--threads", "1", "--allow-worse")
    info = json.loads((here / "run" / "training_config.json").read_text())
    assert info["steps"] == 2 and info["preset"] == "tiny"

    from crystext.hub import CARD_TEMPLATE, render_card

    assert CARD_TEMPLATE.resolve().is_relative_to(site)
    card = render_card(here / "run", "someone/crystext-tiny")
    assert "- steps: 2" in card and "{" + "metadata}" not in card  # filled from the run's own files

    import transformers
    from pymatgen.core import Lattice, Structure

    crystext.register_pipeline()
    cif = Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(fmt="cif")
    pipe = transformers.pipeline("crystal-embedding", model=str(here / "run"), device="cpu")
    vec = pipe(cif)
    assert len(vec) == 64, len(vec)  # the tiny preset's width
    print("SMOKE OK")
''')


def _outer_site_dirs() -> list[str]:
    """The site-packages folders of the interpreter running the tests: a virtual environment's own
    (where ``pip install -e ".[test]"`` put torch and transformers) and any it sees beyond it."""
    import site

    dirs = list(site.getsitepackages()) + [p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages"))]
    return [d for d in dict.fromkeys(os.path.realpath(d) for d in dirs) if os.path.isdir(d)]


def see_outer_packages(venv: Path) -> Path:
    """Let ``venv`` see the packages of the interpreter running the tests, after its own.

    ``python -m venv --system-site-packages`` sees the *base* interpreter's packages, which inside
    a virtual environment are not the ones the tests run with. A ``.pth`` file in the venv's
    site-packages adds the running interpreter's folders with ``site.addsitedir`` (their own
    ``.pth`` files included), after the venv's folder, so what is installed in the venv wins."""
    line = "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in _outer_site_dirs())
    pth = _site_packages(venv) / "_crystext_outer_site.pth"
    pth.write_text(line + "\n")
    return pth


def _site_packages(venv: Path) -> Path:
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


@pytest.mark.slow
def test_the_wheel_works_outside_the_repository(tmp_path):
    # build from a copy of the source (setuptools writes build/ and *.egg-info beside the sources,
    # and a stale build/lib would leak deleted modules into the wheel)
    src = tmp_path / "src"
    for name in ("crystext", "training", "tokenizers", "model_cards"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            str(src), "-w", str(dist)], capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(dist.glob("crystext-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for data in ("crystext/_data/presets/base.yaml", "crystext/_data/presets/tiny.yaml",
                 "crystext/_data/accelerate/cpu-ddp.yaml", "crystext/_data/model_cards/template.md",
                 "crystext/_data/tokenizers/crystext-cif/tokenizer.json",
                 "crystext/_data/tokenizers/crystext-compact/tokenizer.json"):
        assert data in names, data
    # nothing that would shadow the `tokenizers` library or other top-level names
    assert {n.split("/")[0] for n in names} <= {"crystext", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1]
                                                + ".dist-info"}

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    see_outer_packages(venv)
    install = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "smoke.py").write_text(SMOKE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONNOUSERSITE": "1"})
    # the venv's own site-packages comes first, so its crystext shadows the system's editable one
    done = subprocess.run([str(py), "smoke.py", str(_site_packages(venv))], cwd=work, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    assert "SMOKE OK" in done.stdout
