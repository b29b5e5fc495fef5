#!/usr/bin/env bash
# The GPU rows of issue 13 in one short run, for a session that is lent a device machine (docs/PERFORMANCE.md,
# "The GPU path"). Prepared and checked on a CPU box with DEVICE=cpu; run there with the `device` tool:
#
#   here, once:  echo /.whl/ >> .git/info/exclude
#                python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#                  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#                  grpcio==1.85.3 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 grpcio-status==1.85.3 \
#                  protobuf==7.36.2 googleapis-common-protos==1.76.0
#                make proto          # client/hamlet_client/_generated, ignored by git: carry it
#   device:      run(command="bash bench/device_check.sh", carry=[".whl", "client/hamlet_client/_generated"],
#                    timeout_s=540)
#
# It prints (and writes under $OUT): the in-process agent-steps/s of the LSTM at large batch, eager and as a
# CUDA graph (bench/bench_gpu.py, goal >= 1M), then `hamlet-server --device cuda` driven by hamlet-bench with
# many streams x many envs beside the bare-gRPC floor (goal >= 300k env-steps/s on one server).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device-check}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
mkdir -p "$OUT"
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/server:$PWD/client${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

echo "== in process: bench/bench_gpu.py"
timeout 240 "$PY" bench/bench_gpu.py --device "$DEVICE" --batches "${BATCHES:-1024,4096,16384,65536}" \
  --repeats 10 | tee "$OUT/in_process.txt"

echo "== over gRPC: hamlet-server --device $DEVICE, hamlet-bench ${STREAMS:=64} streams x ${ENVS:=512} envs"
"$PY" -m hamlet_server.cli serve --models models --port 0 --metrics-port 0 --device "$DEVICE" --backend torch \
  --max-batch "${MAX_BATCH:-65536}" --max-envs "$ENVS" --forward-thread "${FORWARD_THREAD:-true}" \
  --poll-interval 0 --log-level WARNING > "$OUT/server.out" 2> "$OUT/server.err" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do grep -q READY "$OUT/server.out" 2>/dev/null && break; sleep 1; done
TARGET=$(sed -n 's/^READY //p' "$OUT/server.out")
[ -n "$TARGET" ] || { cat "$OUT/server.err"; exit 1; }
timeout 240 "$PY" -m hamlet_client.loadtest --target "$TARGET" --model townlet-L2-lstm --streams "$STREAMS" \
  --envs "$ENVS" --channels "${CHANNELS:-8}" --episode-steps 0 --warmup 3 --duration "${DURATION:-10}" \
  --rounds 2 --floor --quiet --json "$OUT/grpc.json" | tee "$OUT/grpc.txt"
echo "goal: >= 300,000 env-steps/s over gRPC on one server (issue 13)"
