#!/usr/bin/env bash
# Every GPU check and benchmark of the fused kernels in one device call (see bench/README.md):
#   bash bench/gpu_suite.sh [tests] [report] [sanitizer] [sinkhorn] [relation] [other]     (default: all)
# Writes logs and JSON under $OUT (the device tool's output folder; bench/results/gpu-out locally) and
# prints a short ratio table per benchmark part. Wheels missing on the image (POT, ...) travel in .whl/.
set -uo pipefail
OUT=${OUT:-bench/results/gpu-out}
mkdir -p "$OUT"
PY=${PY:-python3}
PARTS=${*:-tests report sanitizer sinkhorn relation other}
export PYTHONUNBUFFERED=1
PART_TIMEOUT=${PART_TIMEOUT:-150}  # seconds per part, so one slow part cannot eat the whole device lease
BENCH_ARGS=${BENCH_ARGS:---benchmark-max-time=0.2 --benchmark-min-rounds=3}
wants() { [[ " $PARTS " == *" $1 "* ]]; }

if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
$PY -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
  || { tail -20 "$OUT/install.log"; exit 1; }
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
TAG=$(echo "$GPU" | grep -oiE 'h100|h200|a100|l40s?|b200' | head -1 | tr 'A-Z' 'a-z')
TAG=${TAG:-gpu}-$(date +%F)
echo "device: $GPU  torch $($PY -c 'import torch, triton; print(torch.__version__, "triton", triton.__version__)')"
status=0

if wants tests; then  # real Triton compile on CUDA: fp32, fp16, bf16; op-level torch.compile with the kernels
  timeout "$PART_TIMEOUT" $PY -m pytest -q --noconftest -p no:cacheprovider tests/test_kernels_sinkhorn.py tests/test_kernels_relation.py \
    tests/test_kernels_compile.py >"$OUT/tests.log" 2>&1 || status=1
  echo "tests: $(tail -1 "$OUT/tests.log")"
  [ $status -eq 0 ] || grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20
fi

if wants report; then  # AOT prediction (no GPU needed) next to what the device's own compile used
  timeout "$PART_TIMEOUT" $PY -m pcmci.cli kernels report --shapes all --out "$OUT" >/dev/null 2>"$OUT/kernels-report.log" || status=1
  echo "kernels report (AOT, sm_80/89/90): $(tail -1 "$OUT/kernels-report.md")"
  timeout "$PART_TIMEOUT" $PY bench/kernel_registers.py "$OUT/kernels-report.json" --shapes all >"$OUT/kernel-registers.md" \
    2>"$OUT/kernel-registers.log" || status=1
  echo "real compile on the device vs AOT prediction: $OUT/kernel-registers.md"
  head -12 "$OUT/kernel-registers.md"
fi

if wants sanitizer; then
  SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  if [ -x "$SAN" ]; then
    timeout "$PART_TIMEOUT" "$SAN" --tool memcheck --error-exitcode 3 $PY - >"$OUT/sanitizer.log" 2>&1 <<'PYEOF'
import torch
from pcmci.kernels import log_sinkhorn, relation_product
for R, S in ((10, 8), (200, 300)):  # both Sinkhorn regimes, masks, forward and backward
    cost = torch.rand(3, R, S, device="cuda", requires_grad=True)
    mask = torch.rand(3, R, S, device="cuda") > 0.1
    log_sinkhorn(cost, 0.1, 5, mask=mask).sum().backward()
q, k, v = (torch.randn(2, 8, 70, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
relation_product(q, k, v, torch.full((8,), 0.125, device="cuda", requires_grad=True)).sum().backward()
torch.cuda.synchronize()
PYEOF
    rc=$?; echo "compute-sanitizer memcheck: rc=$rc  $(grep -m1 'ERROR SUMMARY' "$OUT/sanitizer.log")"
    [ $rc -eq 0 ] || status=1
  else
    echo "compute-sanitizer: not found"
  fi
fi

bench() {  # bench NAME PYTEST-ARGS...: one pytest-benchmark run, JSON + log, then its ratio table
  local name=$1; shift
  timeout "${BENCH_TIMEOUT:-280}" $PY -m pytest -q -p no:cacheprovider "$@" $BENCH_ARGS --benchmark-columns=min,mean,rounds \
    --benchmark-json="$OUT/$TAG-$name.json" >"$OUT/bench-$name.log" 2>&1 || status=1
  echo "== $name: $(tail -1 "$OUT/bench-$name.log")"
  awk '/^min time in ms/ {p = 1} p && (/^$/ || /^=/) {exit} p' "$OUT/bench-$name.log"
}
wants sinkhorn && bench sinkhorn bench/bench_kernels.py -k test_sinkhorn
wants relation && bench relation bench/bench_kernels.py -k test_relation
if wants other; then  # the other benchmark suites of bench/ (model, data), when present
  others=$(ls bench/bench_*.py 2>/dev/null | grep -v bench_kernels.py)
  [ -z "$others" ] || bench other $others
fi
# The device tool brings back at most 8 files: pack them into one archive when there are more
if [ "$(ls "$OUT" | wc -l)" -gt 8 ]; then
  tar czf /tmp/gpu-suite.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/gpu-suite.tgz "$OUT/"
  echo "packed: $OUT/gpu-suite.tgz"
fi
exit $status
