"""benchmarks/multiscale/ablation.py: its feature cache is keyed by what the features depend on."""

from __future__ import annotations

from argparse import Namespace

def _args(**kw):
    base = dict(lm_embeddings=None, run=None, lm_bf16=False, lm_pooling="mean", limit_train=None, limit_test=None, element_table="magpie")
    return Namespace(**{**base, **kw})


def test_lm_cache_key_follows_the_weights_not_the_folder_name(tmp_path, benchmark_script):
    ablation = benchmark_script("multiscale/ablation.py")
    old, new, copy = (tmp_path / d / "crystext-mp" for d in ("old", "new", "copy"))
    for folder, weights in ((old, b"weights v1"), (new, b"weights v2"), (copy, b"weights v1")):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(weights)

    def key(run, **kw):
        return ablation._branch_key(_args(run=str(run), **kw), "perov_5", "lm")

    # a retrained release under the same name must not read the last release's vectors
    assert key(old) != key(new)
    assert key(old) == key(copy)
    assert key(old) != key(old, lm_bf16=True)
    assert key(old) != key(old, lm_pooling="last")
    assert "crystext-mp" in key(old)
    # precomputed vectors are named by their folder
    assert ablation._branch_key(_args(lm_embeddings=str(tmp_path / "vecs")), "perov_5", "lm").endswith("lm-vecs")
