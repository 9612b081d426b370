#!/usr/bin/env bash
# One device call: unpack a carried corpus, pretrain on the GPU, bring the run back in pieces.
#
# Runs on the lent machine, from the repository root (see training/README.md, "On a lent GPU"):
#   bash training/device/pretrain.sh PACKED PRESET MINUTES [crystext pretrain arguments...]
# e.g.
#   bash training/device/pretrain.sh .device/mp.corpus.xz base 8 --init .device/init --set batch_size=128
#
# PACKED: a file of `crystext corpus pack`; PRESET: a preset name or config.json; MINUTES: the
# pretrain --max-time (leave ~2 minutes of the call for start-up and packing the result).
# Python packages the machine's image lacks (datasets, dill, multiprocess) come as wheels in
# .whl/ (carried), installed into /tmp/site. The finished run folder (checkpoints/ left out) is
# written as run.tar.00, run.tar.01, ... of at most 15 MiB each under $OUT: the device returns at
# most 8 files of 16 MiB. Join them here with:  cat run.tar.* | tar -x -C runs/
set -euo pipefail
PACKED=$1; PRESET=$2; MINUTES=$3; shift 3
OUT=${OUT:?OUT is the folder whose files come back}
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
WORK=${WORK:-/tmp/crystext-device}
mkdir -p "$WORK" "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/machine.txt" 2>/dev/null || echo "no GPU" > "$OUT/machine.txt"
python3 -m crystext corpus unpack "$PACKED" --out "$WORK/corpus" 2>&1 | tail -n 3
status=0  # whatever pretrain says (3: did not beat the unigram baseline), the run comes back
python3 -m crystext pretrain "$PRESET" --corpus "$WORK/corpus" --out "$WORK/run" --max-time "$MINUTES" "$@" \
  > "$WORK/pretrain.log" 2>&1 || status=$?
tr '\r' '\n' < "$WORK/pretrain.log" | grep -v -E '^\s*$' | tail -n 60 > "$OUT/pretrain.log"
tail -n 5 "$OUT/pretrain.log"
if [ -d "$WORK/run" ]; then
  tar -C "$WORK" --exclude=run/checkpoints -cf - run | split -b 15m -d -a 2 - "$OUT/run.tar."
fi
ls -l "$OUT"
exit "$status"
