"""crystext.corpus.pack: corpus folders packed into one small file and back, losslessly."""

from __future__ import annotations

import pytest

from crystext.corpus import build_corpus, load_corpus, pack_corpus, unpack_corpus
from crystext.errors import ConfigError, DataNotFoundError

KW = dict(dedupe="text", progress=False, split=(0.6, 0.2, 0.2), limit=24)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    built = [build_corpus(["aflow-prototypes"], out=root / f"p{k}", tokenizer="crystext-compact", part=f"{k}/2", **KW)
             for k in (1, 2)]
    return root, built


def test_packed_parts_unpack_to_the_same_rows_in_order(parts, tmp_path):
    root, built = parts
    meta = pack_corpus([root / "p1", root / "p2"], tmp_path / "c.xz")
    dd = unpack_corpus(tmp_path / "c.xz", tmp_path / "c")
    assert list(dd) == list(built[0])
    for split in dd:
        want = [row for part in built for row in part[split].to_list()]
        got = dd[split].to_list()
        assert got == want  # every column, text included (decoded from the ids), same order
        assert meta["splits"][split] == {"documents": len(want), "tokens": sum(r["num_tokens"] for r in want)}
    again = load_corpus(tmp_path / "c")
    assert again.summary["splits"] == meta["splits"]
    assert [p["folder"] for p in again.summary["packed_from"]] == ["p1", "p2"]
    assert again.summary["config"]["part"] == "1/2"
    # far smaller than the folders it packs
    folder_bytes = sum(f.stat().st_size for p in ("p1", "p2") for f in (root / p).rglob("*.arrow"))
    assert (tmp_path / "c.xz").stat().st_size < folder_bytes / 3


def test_the_cli_round_trip(parts, tmp_path, capsys):
    from crystext.cli import main

    root, built = parts
    assert main(["corpus", "pack", str(root / "p1"), "--out", str(tmp_path / "p1.xz")]) == 0
    assert "bytes/token" in capsys.readouterr().out
    assert main(["corpus", "unpack", str(tmp_path / "p1.xz"), "--out", str(tmp_path / "p1")]) == 0
    assert load_corpus(tmp_path / "p1")["train"].to_list() == built[0]["train"].to_list()


def test_bad_input_is_named(parts, tmp_path):
    root, _ = parts
    other = build_corpus(["aflow-prototypes"], out=tmp_path / "cif", tokenizer="crystext-cif", **{**KW, "limit": 4})
    assert len(other["train"])
    with pytest.raises(ConfigError, match="tokenizer differs"):
        pack_corpus([root / "p1", tmp_path / "cif"], tmp_path / "mixed.xz")
    with pytest.raises(DataNotFoundError, match="not a corpus folder"):
        pack_corpus([tmp_path], tmp_path / "x.xz")
    with pytest.raises(DataNotFoundError, match="no such packed corpus"):
        unpack_corpus(tmp_path / "absent.xz", tmp_path / "out")
    (tmp_path / "junk.xz").write_bytes(b"not lzma at all")
    with pytest.raises(ConfigError, match="junk.xz: not a packed crystext corpus"):
        unpack_corpus(tmp_path / "junk.xz", tmp_path / "out")
    assert not (tmp_path / "mixed.xz").exists()


def test_device_script_brings_the_run_back_in_pieces(parts, tmp_path):
    """training/device/pretrain.sh, run here on the CPU: unpack, pretrain, return the run as pieces
    that join into a loadable folder (what a GPU call returns under the device's file limits)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    root, _ = parts
    pack_corpus([root / "p1", root / "p2"], tmp_path / "c.xz")
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "WORK": str(tmp_path / "work"), "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", str(repo / "training" / "device" / "pretrain.sh"), str(tmp_path / "c.xz"), "tiny", "2",
                           "--max-steps", "2", "--set", "batch_size=4"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    pieces = sorted(out.glob("run.tar.*"))
    assert pieces, done.stdout + done.stderr
    assert all(p.stat().st_size <= 15 * 2**20 for p in pieces)
    back = tmp_path / "back"
    back.mkdir()
    subprocess.run(f"cat {' '.join(map(str, pieces))} | tar -x -C {back}", shell=True, check=True)
    assert not (back / "run" / "checkpoints").exists()
    assert (out / "pretrain.log").read_text().strip()
    AutoModelForCausalLM.from_pretrained(back / "run")
