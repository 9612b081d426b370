"""Precision by capability: bf16 only where the machine at hand runs it fast.

CPUs differ: with AMX or AVX512-BF16 a bf16 matmul is 2-3x faster than float32; on an AVX2-only
CPU torch emulates bf16 and the same matmul is ~50x *slower*. So ``"auto"`` asks the hardware once
per process (capability flags, then a tiny timed matmul) and picks ``"bfloat16"`` only where it
wins, else ``"float32"``. Every entry point (pretrain, finetune, embed, benchmark) resolves its
``precision`` setting through :func:`resolve_precision`; the choice is printed once and stored in
the run's config.

Names accepted: ``auto``; ``bfloat16``/``bf16``; ``float16``/``fp16``; ``float32``/``fp32``/``no``.
"""

from __future__ import annotations

import os
import sys
import time
from functools import lru_cache

from .errors import ConfigError

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
_ALIASES = {
    "auto": "auto", "bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
    "half": "float16", "fp32": "float32", "float32": "float32", "no": "float32", "none": "float32",
    "false": "float32",
}
#: Environment override of the verdict: ``0`` makes ``auto`` pick float32 (as on an AVX2-only CPU),
#: ``1`` makes it pick bf16 without timing. Unset: measure.
BF16_ENV = "CRYSTEXT_BF16"
#: bf16 must be at least this much faster than float32 on the timed matmul to be chosen.
MIN_SPEEDUP = 1.2


def normalise_precision(value: str | bool | None) -> str:
    """Canonical name (``auto``, ``float32``, ``bfloat16``, ``float16``) of a precision setting.

    YAML reads a bare ``no`` as ``False``; ``None``/``False`` mean float32.
    """
    if value is None or value is False:
        return "float32"
    key = str(value).strip().lower()
    if key not in _ALIASES:
        raise ConfigError(f"precision {value!r}: expected one of auto, bfloat16 (bf16), float16 (fp16), "
                          "float32 (fp32, no)")
    return _ALIASES[key]


def _device_type(device) -> str:
    if device is None:
        return "cpu"
    return getattr(device, "type", None) or str(device).split(":")[0]


def _best_ms(fns, repeats: int = 9) -> list[float]:
    """Fastest of ``repeats`` timings of each function, taken in turns.

    The minimum, not the median, and in turns, not one function after the other: other jobs on a
    shared machine only ever add time, and a burst of them would otherwise fall on one function's
    timings alone (on a loaded 2-core machine the median once judged bf16 2.6x slower than float32).
    """
    for fn in fns:
        fn()  # warm-up (kernel selection, first-touch allocation)
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return [1e3 * b for b in best]


@lru_cache(maxsize=None)
def bf16_speed(device_type: str = "cpu") -> dict:
    """Measure whether bf16 is fast on ``device_type`` (``cpu``, ``cuda``, ``mps``); cached per process.

    Returns a dict: ``supported`` (capability), ``fp32_ms`` / ``bf16_ms`` (fastest of 9 timings of a
    512x512 matmul; None where not timed), ``fast`` (the verdict) and ``reason`` (one line for logs).
    """
    import torch

    forced = os.environ.get(BF16_ENV, "").strip()
    if forced in ("0", "1"):
        fast = forced == "1"
        return {"device": device_type, "supported": fast, "fp32_ms": None, "bf16_ms": None, "fast": fast,
                "reason": f"set by {BF16_ENV}={forced}"}
    if device_type == "cuda":
        ok = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        return {"device": "cuda", "supported": ok, "fp32_ms": None, "bf16_ms": None, "fast": ok,
                "reason": "CUDA device with bf16 support" if ok else "CUDA device without bf16"}
    if device_type != "cpu":
        return {"device": device_type, "supported": False, "fp32_ms": None, "bf16_ms": None, "fast": False,
                "reason": f"no bf16 fast path assumed on {device_type}"}
    try:
        supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # older torch or a build without oneDNN
        supported = False
    if not supported:
        return {"device": "cpu", "supported": False, "fp32_ms": None, "bf16_ms": None, "fast": False,
                "reason": "CPU without native bf16 (no AVX512-BF16/AMX): bf16 would be emulated"}
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(512, 512, generator=gen)
    b = torch.randn(512, 512, generator=gen)
    a16, b16 = a.bfloat16(), b.bfloat16()
    fp32, bf16 = _best_ms([lambda: a @ b, lambda: a16 @ b16])
    fast = bf16 * MIN_SPEEDUP <= fp32
    return {"device": "cpu", "supported": True, "fp32_ms": round(fp32, 3), "bf16_ms": round(bf16, 3),
            "fast": fast, "reason": f"512x512 matmul: bf16 {bf16:.2f} ms, float32 {fp32:.2f} ms"}


_announced: set[tuple[str, str]] = set()


def resolve_precision(value: str | bool | None = "auto", device=None, announce: bool = True) -> str:
    """Resolve a precision setting to ``"bfloat16"``, ``"float16"`` or ``"float32"`` for ``device``.

    ``"auto"`` gives ``"bfloat16"`` only where :func:`bf16_speed` finds it fast, else
    ``"float32"``. With ``announce``, the first resolution per device prints the choice and why
    (to stderr, once per process).
    """
    name = normalise_precision(value)
    if name != "auto":
        return name
    kind = _device_type(device)
    speed = bf16_speed(kind)
    choice = "bfloat16" if speed["fast"] else "float32"
    if announce and (kind, choice) not in _announced:
        _announced.add((kind, choice))
        print(f"crystext: precision auto -> {choice} on {kind} ({speed['reason']})", file=sys.stderr)
    return choice


def accelerate_mixed_precision(precision: str) -> str:
    """accelerate's ``mixed_precision`` flag (``bf16``, ``fp16``, ``no``) for a resolved precision."""
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "no"}[normalise_precision(precision)]


def autocast_dtype(precision: str):
    """The ``torch.autocast`` dtype for a resolved precision, or None for float32."""
    import torch

    name = normalise_precision(precision)
    return None if name == "float32" else getattr(torch, name)
