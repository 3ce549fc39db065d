#!/usr/bin/env bash
# Training throughput on one GPU in one device call (issue 16; see bench/README.md):
#   bash bench/gpu_train.sh [tests] [train] [kernels]      (default: all three)
# tests:   the kernel tests with the real Triton compile (and the compile fallback test);
# train:   pcmci bench train $PRESET, synthetic input, $DTYPE: every variant at the first batch size, the
#          compiled+Triton variant alone at the larger ones (stops at the first batch that fails, e.g. out of memory);
# kernels: bench/bench_kernels.py at the paper shapes (fused vs reference vs compiled).
# Each part runs under its own timeout (defaults fit one 10-minute device call with the install); all logs, JSON
# and Markdown are packed into $OUT/gpu-train.tgz. Wheels the image lacks travel in .whl/ (ignored by git).
# Check on CPU: PRESET=tiny DTYPE=fp32 VARIANTS=eager,compiled LARGE_VARIANTS=eager BATCHES="2 4" STEPS=2 \
#   WARMUP=1 TESTS=tests/test_engine_compile_fallback.py KERNEL_FILTER=fused bash bench/gpu_train.sh
set -uo pipefail
OUT=${OUT:-bench/results/gpu-train-out}
mkdir -p "$OUT"
PY=${PY:-python3}
PARTS=${*:-tests train kernels}
PRESET=${PRESET:-paper}
BATCHES=${BATCHES:-8 16 32}
STEPS=${STEPS:-15}
WARMUP=${WARMUP:-3}
DTYPE=${DTYPE:-bf16}
VARIANTS=${VARIANTS:-eager,compiled,compiled+triton}
LARGE_VARIANTS=${LARGE_VARIANTS:-compiled+triton}
TESTS=${TESTS:-tests/test_kernels_sinkhorn.py tests/test_kernels_relation.py tests/test_kernels_compile.py}
TESTS_TIMEOUT=${TESTS_TIMEOUT:-110}
FIRST_TIMEOUT=${FIRST_TIMEOUT:-200}   # the first batch size: three variants, two Inductor compiles of the model
BATCH_TIMEOUT=${BATCH_TIMEOUT:-80}    # each larger batch size: one variant, one compile
KERNEL_TIMEOUT=${KERNEL_TIMEOUT:-90}
KERNEL_FILTER=${KERNEL_FILTER:-not pot}
export PYTHONUNBUFFERED=1
wants() { [[ " $PARTS " == *" $1 "* ]]; }

if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
if ! $PY -c "import pcmci.engine.bench" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
    || { tail -20 "$OUT/install.log"; exit 1; }
fi
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
GPU=${GPU:-cpu}
echo "device: $GPU  $($PY -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)')" \
  | tee "$OUT/device.txt"
status=0

if wants tests; then
  if [ "$GPU" = cpu ]; then export TRITON_INTERPRET=1; fi
  timeout "$TESTS_TIMEOUT" $PY -m pytest -q -p no:cacheprovider $TESTS >"$OUT/tests.log" 2>&1 || status=1
  unset TRITON_INTERPRET
  echo "tests: $(tail -1 "$OUT/tests.log")"
  grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -10
fi

if wants train; then
  first=1
  for b in $BATCHES; do
    variants=$([ $first = 1 ] && echo "$VARIANTS" || echo "$LARGE_VARIANTS")
    limit=$([ $first = 1 ] && echo "$FIRST_TIMEOUT" || echo "$BATCH_TIMEOUT")
    timeout "$limit" $PY -m pcmci --quiet bench train "$PRESET" "optim.batch_size=$b" --steps "$STEPS" \
      --warmup "$WARMUP" --variants "$variants" --dtype "$DTYPE" --out "$OUT/train-b$b" >"$OUT/train-b$b.log" 2>&1
    rc=$?
    echo "== bench train $PRESET batch $b ($variants): rc=$rc"
    grep -E "^\| " "$OUT/train-b$b.log"
    if [ $rc -ne 0 ]; then
      tail -3 "$OUT/train-b$b.log"
      [ $first = 1 ] && status=1
      break  # out of memory or out of time: larger batches will not do better
    fi
    first=0
  done
fi

if wants kernels; then
  PCMCI_BENCH_SHAPES=paper timeout "$KERNEL_TIMEOUT" $PY -m pytest -q -p no:cacheprovider bench/bench_kernels.py \
    -k "$KERNEL_FILTER" --benchmark-max-time=0.1 --benchmark-min-rounds=3 --benchmark-columns=min,mean,rounds \
    --benchmark-json="$OUT/kernels-paper.json" >"$OUT/kernels.log" 2>&1 || status=1
  echo "== kernels at the paper shapes: $(tail -1 "$OUT/kernels.log")"
  awk '/^min time in ms/ {p = 1} p && (/^$/ || /^=/) {exit} p' "$OUT/kernels.log"
fi

# One archive: the device tool brings back few files
tar czf /tmp/gpu-train.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/gpu-train.tgz "$OUT/"
echo "packed: $OUT/gpu-train.tgz (status $status)"
exit $status
