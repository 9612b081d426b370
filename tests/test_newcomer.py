"""A newcomer's path: one model resolver (release name, folder, Hub id, in that order, with an error
listing what was tried), any ``ase.Atoms`` subclass accepted, library noise off in the CLI, and the
README's set-up commands and figures kept where the README says they are."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from crystext.errors import DataNotFoundError
from crystext.resolve import RELEASES_DIR, releases, resolve_model

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """The current directory: a temporary folder outside the checkout."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_release_resolves_by_name_from_any_folder(elsewhere):
    names = releases()
    if not names:
        pytest.skip("no release folders in this checkout")
    name = names[0]
    assert resolve_model(name) == str(RELEASES_DIR / name)
    assert resolve_model(f"models/{name}") == str(RELEASES_DIR / name)  # as the README writes it


def test_a_folder_resolves_relative_to_where_the_user_stands(elsewhere):
    (elsewhere / "runs" / "mine").mkdir(parents=True)
    assert resolve_model("runs/mine") == "runs/mine"
    assert resolve_model(elsewhere / "runs" / "mine") == str(elsewhere / "runs" / "mine")


def test_a_release_name_wins_over_a_folder_of_the_same_name(elsewhere):
    names = releases()
    if not names:
        pytest.skip("no release folders in this checkout")
    (elsewhere / names[0]).mkdir()
    assert resolve_model(names[0]) == str(RELEASES_DIR / names[0])


def test_a_hub_id_is_left_to_from_pretrained(elsewhere):
    assert resolve_model("someone/crystext-tiny") == "someone/crystext-tiny"


def test_a_name_that_is_nothing_says_what_was_tried(elsewhere):
    with pytest.raises(DataNotFoundError) as err:
        resolve_model("no such model")
    message = str(err.value)
    assert "not a release" in message and "no such folder" in message and "not a Hub id" in message
    with pytest.raises(DataNotFoundError, match="no such folder.*not a Hub id"):
        resolve_model("./missing")
    (elsewhere / "runs").mkdir()
    with pytest.raises(DataNotFoundError, match="no such folder"):
        resolve_model("runs/typo")  # a local folder's child, not a Hub repository
    (elsewhere / "file.txt").write_text("x")
    with pytest.raises(DataNotFoundError, match="is a file, not a folder"):
        resolve_model("file.txt")


def test_the_package_exports_the_resolver():
    import crystext

    assert crystext.resolve_model is resolve_model


def test_any_ase_atoms_subclass_is_accepted():
    from ase import Atoms
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    from crystext.inputs import is_ase_atoms, to_structure
    from crystext.text import structure_to_text

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"], [[0, 0, 0], [.5, .5, .5]])
    msonatoms = AseAtomsAdaptor.get_atoms(nacl)  # pymatgen's MSONAtoms, a subclass of ase.Atoms
    assert type(msonatoms) is not Atoms and is_ase_atoms(msonatoms)

    class MyAtoms(Atoms):
        pass

    mine = MyAtoms("NaCl", scaled_positions=[[0, 0, 0], [.5, .5, .5]], cell=[4.0, 4.0, 4.0], pbc=True)
    assert is_ase_atoms(mine) and len(to_structure(mine)) == 2
    assert structure_to_text(msonatoms) == structure_to_text(nacl)
    assert not is_ase_atoms(nacl) and not is_ase_atoms("Atoms")


def test_the_cli_drops_library_noise_and_nothing_else():
    from crystext.quiet import NOISE, silence_library_noise

    silence_library_noise()
    silence_library_noise()  # idempotent: one filter per logger
    for name, starts in NOISE.items():
        logger = logging.getLogger(name)
        assert len(logger.filters) >= 1
        record = logging.LogRecord(name, logging.WARNING, __file__, 1, starts[0] + " {'lm_head.weight'}", None, None)
        assert not all(f.filter(record) for f in logger.filters)
        ranked = logging.LogRecord(name, logging.WARNING, __file__, 1, "[RANK 0] " + starts[0], None, None)
        assert not all(f.filter(ranked) for f in logger.filters)  # accelerate's multi-process prefix
        other = logging.LogRecord(name, logging.WARNING, __file__, 1, "something else", None, None)
        assert all(f.filter(other) for f in logger.filters)


def test_the_readme_is_a_manual_with_its_two_set_up_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    assert "pip install -e . && crystext pretrain" in text
    assert 'pip install -e ".[test]" && python -m pytest' in text
    for verb in ("text convert", "tokenizer build", "corpus build", "corpus stats", "corpus pack", "corpus unpack",
                 "pretrain", "generate", "elements", "embed", "plot elements", "benchmark", "heads train",
                 "finetune", "publish"):
        assert f"`crystext {verb}" in text or f"/ {verb.split()[-1]}" in text or f"`corpus {verb.split()[-1]}" in text, verb


def test_every_local_link_of_the_readme_and_the_docs_points_at_a_file():
    pages = [README] + sorted((REPO / "docs").glob("*.md"))
    # pages other sessions write may not exist yet in a checkout: links to them are allowed
    pending = {"generation.md", "faults.md", "probes.md"}
    missing = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path = (page.parent / target).resolve()
            if not path.exists() and path.name not in pending:
                missing.append(f"{page.relative_to(REPO)} -> {target}")
    assert not missing, missing


def _blocks(language: str, heading: str) -> list[str]:
    """The fenced ``language`` blocks of one README section."""
    text = README.read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
def test_the_quick_tour_runs_from_a_folder_outside_the_checkout(tmp_path):
    """The README's Quick tour, Python and shell, as a new user pastes it, in a temporary folder."""
    import os
    import subprocess
    import sys

    if not releases():
        pytest.skip("no release folders in this checkout")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    (python_block,) = _blocks("python", "Quick tour")
    script = python_block + "\nassert vector.shape == (512,) and elements.shape[1] == 512 and report.valid\nprint('TOUR OK')\n"
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0 and "TOUR OK" in done.stdout, done.stderr[-3000:]
    (shell_block,) = _blocks("bash", "Quick tour")
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")  # this interpreter's python and crystext
    done = subprocess.run(["bash", "-e", "-c", shell_block], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    assert (tmp_path / "vectors.parquet").is_file() and (tmp_path / "elements.csv").is_file()
    assert "Loading weights" not in done.stderr  # the CLI silences the weight-loading bars
