"""CPU cost per structure of every structure representation of the benchmark (process time, one
thread), on a seeded sample of 120 mp_e_form test structures: the numbers behind the runtime
estimate of the default suite (issue 12.6). Process time, not wall time, so the figures hold on a
shared machine.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/representations/cost_probe.py
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
import torch

from crystext.settings import data_dir

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
T = time.process_time


def main() -> None:
    from crystext.benchmark.representations import Run
    from crystext.benchmark.structures import StructureConfig, crystal_graphs, fit_cgcnn_seeds, structure_vectors
    from crystext.inputs import to_structure
    from crystext.text import structure_to_text

    df = pd.read_csv(data_dir(required=True) / "mp_e_form" / "test.csv").sample(120, random_state=0)
    cifs = list(df["cif"])
    t = T()
    sts = [to_structure(c) for c in cifs]
    print(f"parse   {1000 * (T() - t) / len(sts):6.1f} ms/structure ({np.mean([len(s) for s in sts]):.1f} atoms)", flush=True)
    t = T()
    texts = [structure_to_text(s, symprec=0.1) for s in sts]
    print(f"text    {1000 * (T() - t) / len(sts):6.1f} ms/structure", flush=True)
    cfg = StructureConfig()
    t = T()
    structure_vectors("ace", cifs, sts, cfg, None, "probe")
    print(f"ace     {1000 * (T() - t) / len(sts):6.1f} ms/structure", flush=True)
    structure_vectors("chgnet", cifs[:10], sts[:10], cfg, None, "probe")  # model load
    t = T()
    structure_vectors("chgnet", cifs[10:], sts[10:], cfg, None, "probe")
    print(f"chgnet  {1000 * (T() - t) / (len(sts) - 10):6.1f} ms/structure", flush=True)
    t = T()
    graphs = crystal_graphs(sts, cfg)
    print(f"graph   {1000 * (T() - t) / len(sts):6.1f} ms/structure", flush=True)
    y = df["target"].to_numpy()
    short = StructureConfig(cgcnn_epochs=5, cgcnn_patience=100)
    t = T()
    fit_cgcnn_seeds({"train": graphs[:100], "val": graphs[100:], "test": graphs[100:]},
                    {"train": y[:100], "val": y[100:], "test": y[100:]}, [0], short)
    print(f"cgcnn   {1000 * (T() - t) / (100 * 5):6.1f} ms per training structure-epoch", flush=True)
    for name in ("base", "compact"):
        run = Run.parse(f"{name}=models/crystext-{name}")
        views = [(layer, p) for layer in run.resolve_layers(("middle", "last")) for p in ("mean", "last")]
        t = T()
        run.structure_views(texts, views, None, precision="bfloat16")
        print(f"LM {name:8s} {1000 * (T() - t) / len(texts):6.1f} ms/structure (4 views, bf16)", flush=True)


if __name__ == "__main__":
    main()
