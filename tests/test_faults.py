"""Faults: interrupted and killed runs, two writers on one output, damaged files, a full disk,
skipped-row listings, hints that must work, and descriptor sizes (see docs/faults.md)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from crystext.atomic import (
    DamagedFileError,
    DiskFullError,
    OutputBusyError,
    OutputLock,
    SkippedRows,
    atomic_path,
    atomic_write_text,
    check_file,
    check_model_folder,
    is_temp_name,
    read_skipped,
    save_into,
)
from crystext.errors import ConfigError, CrystextError, StructureTooLargeError
from crystext.settings import REPO_ROOT

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "TOKENIZERS_PARALLELISM": "false"}


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _temps(folder: Path) -> list[Path]:
    return [p for p in Path(folder).rglob("*") if is_temp_name(p) or p.name.endswith((".partial", ".tmp"))]


def _crystext(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crystext", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


# --------------------------------------------------------------------------- the bottom layer


def test_atomic_path_leaves_the_old_file_and_no_temp_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer died")
    assert target.read_text() == "old" and _temps(tmp_path) == []
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and _temps(tmp_path) == []


def test_two_writers_use_distinct_temporary_names_and_the_last_complete_one_wins(tmp_path):
    target = tmp_path / "shared.bin"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_bytes(b"A" * 1000)
        second.write_bytes(b"B" * 10)
    assert target.read_bytes() == b"A" * 1000  # the outer block finished last
    assert _temps(tmp_path) == []


def test_a_folder_is_replaced_whole(tmp_path):
    target = tmp_path / "folder"
    with atomic_path(target, folder=True) as tmp:
        (tmp / "a").write_text("1")
    with atomic_path(target, folder=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"] and _temps(tmp_path) == []


def test_disk_full_is_one_line_naming_the_path_and_removes_the_temp(tmp_path):
    target = tmp_path / "big.bin"
    with pytest.raises(DiskFullError) as info:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"x" * 100)
            _enospc()
    message = str(info.value)
    assert str(target) in message and "no space left" in message and "\n" not in message
    assert not target.exists() and _temps(tmp_path) == []
    with pytest.raises(DiskFullError):  # a folder filled by a library (save_pretrained and the like)
        save_into(tmp_path / "run", lambda tmp: (tmp / "w").write_text("x") and _enospc())
    assert not (tmp_path / "run" / "w").exists() and _temps(tmp_path) == []


def test_a_second_writer_is_refused_naming_the_first_and_a_killed_holder_frees_the_lock(tmp_path):
    target = tmp_path / "vectors.parquet"
    with OutputLock(target):
        with pytest.raises(OutputBusyError, match=f"pid {os.getpid()}"):
            OutputLock(target).acquire()
    assert not (tmp_path / "vectors.parquet.lock").exists()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from crystext.atomic import OutputLock; "
                               f"OutputLock({str(target)!r}).acquire(); print('held', flush=True); time.sleep(600)"],
                              env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusyError, match=f"pid {holder.pid}"):
            OutputLock(target).acquire()
    finally:
        holder.kill()
        holder.wait()
    with OutputLock(target):  # the kernel released the dead holder's lock
        pass


def test_check_file_names_empty_truncated_and_damaged_files(tmp_path):
    from safetensors.torch import save_file

    weights = tmp_path / "model.safetensors"
    save_file({"w": torch.arange(1000, dtype=torch.float32)}, str(weights))
    check_file(weights)
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])
    with pytest.raises(DamagedFileError, match=r"model\.safetensors: truncated safetensors file"):
        check_file(weights)
    weights.write_bytes(b"")
    with pytest.raises(DamagedFileError, match="empty file"):
        check_file(weights)
    state = tmp_path / "optimizer.bin"
    torch.save({"x": torch.ones(100)}, state)
    check_file(state)
    state.write_bytes(state.read_bytes()[:-30])
    with pytest.raises(DamagedFileError, match=r"optimizer\.bin: truncated or damaged torch file"):
        check_file(state)
    config = tmp_path / "config.json"
    config.write_text('{"a": ')
    with pytest.raises(DamagedFileError, match="config.json: not valid JSON"):
        check_file(config)


def test_skipped_rows_file_lists_every_row(tmp_path):
    rows = SkippedRows(tmp_path / "out.skipped.csv")
    rows.add("m1", "a.csv", "CIFParseError", "m1: bad\nsecond line")
    rows.add("m2", "a.csv", "too_long", "2000 tokens")
    rows.write()
    listed = read_skipped(tmp_path / "out.skipped.csv")
    assert [r["id"] for r in listed] == ["m1", "m2"] and listed[0]["message"] == "m1: bad"


# --------------------------------------------------------------------------- embed


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from crystext.modeling import build_model
    from crystext.tokenization import load_tokenizer

    path = tmp_path_factory.mktemp("runs") / "tiny"
    tok = load_tokenizer("crystext-cif")
    build_model("tiny", tok, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """Two CSV tables of different sizes (bad rows included) and their good row ids."""
    from crystext.builtin import aflow_prototypes

    root = tmp_path_factory.mktemp("tables")
    good = [(pid, s) for pid, s, _ in aflow_prototypes() if s.is_ordered and len(s) <= 8][:30]
    rows = [{"material_id": f"m{i}", "cif": s.to(fmt="cif")} for i, (_, s) in enumerate(good)]
    bad = [{"material_id": "broken", "cif": "data_x\n_cell_length_a oops\n"}, {"material_id": "empty", "cif": ""}]
    pd.DataFrame(rows[:3] + bad).to_csv(root / "small.csv", index=False)
    pd.DataFrame(rows).to_csv(root / "large.csv", index=False)
    return root, [r["material_id"] for r in rows]


def test_embed_lists_skipped_rows_beside_its_output(run_dir, tables, tmp_path):
    root, _ = tables
    out = tmp_path / "v.parquet"
    done = _crystext("embed", str(root / "small.csv"), "--model", str(run_dir), "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    listed = read_skipped(tmp_path / "v.parquet.skipped.csv")
    assert sorted(r["id"] for r in listed) == ["broken", "empty"]
    assert {r["reason"] for r in listed} == {"CIFParseError"} and all(r["source"].endswith("small.csv") for r in listed)
    assert f"listed in {tmp_path / 'v.parquet.skipped.csv'}" in done.stdout
    assert _temps(tmp_path) == [] and not (tmp_path / "v.parquet.lock").exists()


def test_embed_refuses_an_output_another_process_is_writing(run_dir, tables, tmp_path):
    root, _ = tables
    out = tmp_path / "v.parquet"
    with OutputLock(out):
        done = _crystext("embed", str(root / "small.csv"), "--model", str(run_dir), "--out", str(out), "--no-progress")
    assert done.returncode == 2 and not out.exists()
    line = done.stderr.strip().splitlines()[-1]
    assert f"pid {os.getpid()}" in line and "another process" in line


def test_two_concurrent_embeds_never_leave_a_file_that_a_successful_run_did_not_write(run_dir, tables, tmp_path):
    from crystext.embeddings import read_vectors

    root, ids = tables
    out = tmp_path / "same.parquet"
    for trial in range(2):
        procs = {name: subprocess.Popen([sys.executable, "-m", "crystext", "embed", str(root / f"{name}.csv"),
                                         "--model", str(run_dir), "--out", str(out), "--no-progress"],
                                        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name in ("small", "large")}
        codes = {name: p.wait(timeout=300) for name, p in procs.items()}
        errors = {name: p.stderr.read() for name, p in procs.items()}
        for p in procs.values():
            p.stdout.close(), p.stderr.close()
        assert set(codes.values()) <= {0, 2} and 0 in codes.values(), errors
        for name, code in codes.items():
            if code == 2:
                assert "another process" in errors[name], errors[name]
        got, _ = read_vectors(out)  # a readable Parquet file
        winners = [name for name, code in codes.items() if code == 0]
        expected = {"small": ids[:3], "large": ids}
        assert got in [expected[w] for w in winners]
        if len(winners) == 1:
            assert got == expected[winners[0]]
        assert _temps(tmp_path) == [] and not (tmp_path / "same.parquet.lock").exists()
        out.unlink()


def test_embed_disk_full_is_one_line_and_leaves_nothing(run_dir, tables, tmp_path, monkeypatch, capsys):
    import pyarrow.parquet as pq

    from crystext.cli import main

    root, _ = tables
    monkeypatch.setattr(pq.ParquetWriter, "write_table", _enospc)
    out = tmp_path / "v.parquet"
    code = main(["embed", str(root / "large.csv"), "--model", str(run_dir), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(out) in err[0] and "no space left on device" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_embed_max_atoms_hint_names_an_option_that_exists(run_dir, tables, tmp_path):
    root, _ = tables
    done = _crystext("embed", str(root / "small.csv"), "--model", str(run_dir), "--out", str(tmp_path / "v.parquet"),
                     "--no-progress", "--max-atoms", "1")
    assert done.returncode in (0, 1)
    listed = [r for r in read_skipped(tmp_path / "v.parquet.skipped.csv") if r["reason"] == "StructureTooLargeError"]
    assert listed
    hint = listed[0]["message"].split("raise the limit with ")[1].split(" (")[0]
    assert hint.startswith("--max-atoms ")
    done = _crystext("embed", str(root / "small.csv"), "--model", str(run_dir), "--out", str(tmp_path / "w.parquet"),
                     "--no-progress", *hint.split(), "--time-limit", "30")
    assert done.returncode == 0, done.stderr
    again = read_skipped(tmp_path / "w.parquet.skipped.csv")
    assert not [r for r in again if r["id"] == listed[0]["id"]]


def test_pipeline_accepts_the_limits_its_hints_advise_and_names_garbage_text(run_dir):
    import transformers

    from crystext.builtin import aflow_prototypes
    from crystext.errors import CIFParseError

    pipe = transformers.pipeline("crystal-embedding", model=str(run_dir), device="cpu")
    s = next(s for _, s, _ in aflow_prototypes() if s.is_ordered and len(s) >= 4)
    with pytest.raises(StructureTooLargeError) as info:
        pipe(s, max_atoms=2)
    advised = str(info.value).split("raise the limit with ")[1].split(" (")[0]
    assert advised.startswith("max_atoms=")
    value = int(advised.split("=")[1])
    assert pipe(s, max_atoms=value, time_limit=30).shape == (64,)
    with pytest.raises(CIFParseError) as info:
        pipe("this is not a crystal")
    assert "neither an existing file nor CIF text" in str(info.value)
    assert str(info.value).count("this is not a crystal") == 1


def test_a_damaged_model_folder_is_one_line_naming_the_file(run_dir, tables, tmp_path):
    import shutil

    import transformers

    from crystext.embeddings import load_run

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for load in (lambda: load_run(broken), lambda: transformers.pipeline("crystal-embedding", model=str(broken))):
        with pytest.raises(DamagedFileError, match=r"model\.safetensors: truncated safetensors file"):
            load()
    root, _ = tables
    for args in (["embed", str(root / "small.csv"), "--model", str(broken), "--out", str(tmp_path / "v.parquet")],
                 ["generate", str(broken), "-n", "1"]):
        done = _crystext(*args, "--no-progress") if args[0] == "embed" else _crystext(*args)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and str(weights) in lines[0] and "truncated" in lines[0], done.stderr
    (broken / "model.safetensors").write_bytes(b"")
    with pytest.raises(DamagedFileError, match="empty file"):
        check_model_folder(broken)


# --------------------------------------------------------------------------- pretraining


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from crystext.corpus import build_corpus

    out = tmp_path_factory.mktemp("corpus") / "corpus"
    build_corpus(["aflow-prototypes"], out=out, limit=40, split=(0.7, 0.15, 0.15), progress=False)
    return out


def _preset(tmp_path: Path, **training) -> Path:
    from crystext.modeling import load_preset

    preset = load_preset("tiny")
    preset["training"].update(training)
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump({"model": preset["model"], "training": preset["training"]}))
    return path


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_ctrl_c_saves_a_checkpoint_and_the_rerun_is_bit_identical(corpus, tmp_path):
    preset = _preset(tmp_path, max_steps=120, checkpoint_interval=1000, eval_interval=1000, log_interval=1)
    common = [str(preset), "--corpus", str(corpus), "--no-progress", "--allow-worse", "--threads", "1"]
    full = _crystext("pretrain", *common, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr[-2000:]

    out = tmp_path / "part"
    proc = subprocess.Popen([sys.executable, "-m", "crystext", "pretrain", *common, "--out", str(out)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "log.csv"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) > 5:  # header + 5 steps: inside the loop
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    checkpoints = sorted((out / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 1, err[-2000:]
    step = int(checkpoints[0].name.split("-")[1])
    logged = pd.read_csv(log).step.max()
    assert 5 <= step == logged < 120  # the checkpoint is the step the loop had reached
    assert "checkpoint" in err and "saved" in err

    again = _crystext("pretrain", *common, "--out", str(out))
    assert again.returncode == 0, again.stderr[-2000:]
    info = json.loads((out / "training_config.json").read_text())
    assert info["resumed_from"] == checkpoints[0].name and info["sessions"] == 2
    a, b = pd.read_csv(tmp_path / "full" / "log.csv"), pd.read_csv(log)
    assert a.step.tolist() == b.step.tolist() and a.train_loss.tolist() == b.train_loss.tolist()
    assert _same_weights(tmp_path / "full", out)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_exactly(corpus, tmp_path):
    from crystext.training import pretrain

    preset = yaml.safe_load(_preset(tmp_path, max_steps=8, checkpoint_interval=2).read_text())
    full = pretrain(preset, corpus, tmp_path / "full", progress=False)
    part = pretrain(preset, corpus, tmp_path / "part", stop_at=6, progress=False)
    newest = part / "checkpoints" / "step-0000006"
    (newest / "random_states_0.pkl").write_bytes(b"")  # empty RNG state: resuming would not be exact
    with pytest.warns(RuntimeWarning, match=r"step-0000006: .*random_states_0\.pkl: empty file.*resuming from "
                                            r"step-0000004"):
        pretrain(preset, corpus, part, progress=False)
    assert json.loads((part / "training_config.json").read_text())["resumed_from"] == "step-0000004"
    assert _same_weights(full, part)
    assert (part / "checkpoints" / "step-0000006.damaged").is_dir()


def test_an_altered_checkpoint_file_is_caught_by_its_manifest(corpus, tmp_path):
    from crystext.training import pretrain, verify_checkpoint

    preset = yaml.safe_load(_preset(tmp_path, max_steps=4, checkpoint_interval=2).read_text())
    part = pretrain(preset, corpus, tmp_path / "part", stop_at=2, progress=False)
    ckpt = part / "checkpoints" / "step-0000002"
    verify_checkpoint(ckpt)
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-8] ^= 0xFF  # same size, one weight's byte flipped: structurally fine, wrong all the same
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(DamagedFileError, match=r"model\.safetensors: contents differ"):
        verify_checkpoint(ckpt)
    # the only checkpoint is damaged: say the run cannot be resumed exactly instead of going on
    with pytest.raises(CrystextError, match="cannot be resumed exactly") as info:
        pretrain(preset, corpus, part, resume=True, progress=False)
    assert "model.safetensors" in str(info.value) and "\n" not in str(info.value)


def test_pretrain_disk_full_names_the_path_and_leaves_no_partial_files(corpus, tmp_path, monkeypatch):
    import accelerate

    from crystext import training

    preset = yaml.safe_load(_preset(tmp_path, max_steps=2, checkpoint_interval=2).read_text())
    def half_save(self, path, **kwargs):  # writes part of a checkpoint, then the disk is full
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(b"\0" * 64)
        _enospc()

    monkeypatch.setattr(accelerate.Accelerator, "save_state", half_save)
    with pytest.raises(DiskFullError, match=r"checkpoints/step-0000002: no space left"):
        training.pretrain(preset, corpus, tmp_path / "a", progress=False)
    assert not list((tmp_path / "a" / "checkpoints").iterdir())
    monkeypatch.undo()
    monkeypatch.setattr(training, "plot_loss", _enospc)  # the last of the final files
    with pytest.raises(DiskFullError, match="no space left"):
        training.pretrain(preset, corpus, tmp_path / "b", progress=False)
    assert _temps(tmp_path / "b") == [] and not (tmp_path / "b" / "loss.png").exists()


# --------------------------------------------------------------------------- corpus build


def test_corpus_build_disk_full_and_a_second_builder(tmp_path, monkeypatch):
    import pyarrow as pa

    from crystext.corpus import build_corpus

    out = tmp_path / "corpus"
    with OutputLock(out):
        with pytest.raises(OutputBusyError, match=f"pid {os.getpid()}"):
            build_corpus(["aflow-prototypes"], out=out, limit=10, progress=False)
    monkeypatch.setattr(pa.ipc, "new_stream", _enospc)
    with pytest.raises(DiskFullError) as info:
        build_corpus(["aflow-prototypes"], out=out, limit=10, progress=False)
    assert str(out) in str(info.value) and "\n" not in str(info.value)
    assert _temps(tmp_path) == [] and not (out / "dataset_dict.json").exists()
    assert not (tmp_path / "corpus.lock").exists()
    monkeypatch.undo()
    dd = build_corpus(["aflow-prototypes"], out=out, limit=10, progress=False)  # the rerun completes
    assert sum(len(dd[s]) for s in dd) > 0 and (out / "skipped.csv").is_file()


# --------------------------------------------------------------------------- descriptor sizes


def test_ace_defaults_are_sized_for_mp_and_refuse_what_would_not_fit(monkeypatch):
    from pymatgen.core import Lattice, Structure

    from crystext.descriptors import ACE

    elements = ["Li", "Fe", "P", "O", "Na", "Cl"]
    structures = [Structure(Lattice.cubic(4.0 + 0.1 * i), [elements[i], elements[(i + 1) % 6]],
                            [[0, 0, 0], [0.5, 0.5, 0.5]]) for i in range(6)]
    ace = ACE().fit(structures)
    assert ace.n_features_ == 15_128  # the figure in the docstring (auto table: 3 channels, 4 blocks)
    assert ace.result_bytes(36_737) < 2.3e9  # all of mp_e_form as float32
    X = ace.transform(structures)
    assert X.dtype == np.float32 and X.shape == (6, 15_128) and np.isfinite(X).all()
    streamed = np.concatenate(list(ace.transform_iter(structures, chunk_structures=4)))
    np.testing.assert_array_equal(streamed, X)
    called = []
    monkeypatch.setattr(ACE, "_batch_basis", lambda self, chunk: called.append(1))
    small = ACE(max_memory=100_000).fit(structures)  # 363 KB needed
    with pytest.raises(ConfigError, match=r"6 structures x 15,128 features x 4 bytes = 363.1 kB, more than the "
                                          r"100.0 kB allowed .*transform_iter"):
        small.transform(structures)
    assert called == []  # refused before any work
