#!/usr/bin/env bash
# The issue-8 GPU checks in ONE device call (about 4-5 minutes on one GPU). Build first, here:
#   reference-server/bench/gpu/build-carry.sh        # fills target/gpu-carry/
# then on the device machine (run tool, carry ["target/gpu-carry"], timeout_s ~540):
#   bash reference-server/bench/gpu/run-gpu-checks.sh
# Results go to $OUT (the run tool's folder that comes back), one file per step, and a summary
# on stdout. Steps never abort the script; each records its exit status.
#   1. parity      cuda_parity tests (CUDA vs CPU tokens/logits; every device)
#   2. gemm        pure cuBLAS (the step's two sgemms) vs the engine's whole step, batch 1/8/32/128
#   3. serve       in-process server, cuda executor, closed loop of B clients at B = 1/8/32/128:
#                  requests/s, tokens/s, mean decode batch, serving overhead vs bare step
#   4. wrk         the real binary under wrk (64-token and 1-token requests), cuda vs cpu executor
#   nvidia-smi samples GPU utilisation during 3 and 4.
set -u
BIN=${BIN:-target/gpu-carry}
OUT=${OUT:-/tmp/gpu-checks}
SECS=${FREELANE_GPU_BENCH_SECS:-8}
export FREELANE_GPU_BENCH_SECS=$SECS
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: > "$summary"
log() { echo "$*" | tee -a "$summary"; }

# --- 0. environment: the driver, and NVRTC / cuBLAS wherever they are installed ----------------
log "== environment"
nvidia-smi -L 2>&1 | tee -a "$summary"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$summary"
extra=""
for d in /usr/local/cuda/lib64 /usr/local/cuda-*/lib64 /usr/local/cuda-*/targets/x86_64-linux/lib \
         /usr/lib/x86_64-linux-gnu /opt/conda/lib \
         /usr/local/lib/python3*/dist-packages/nvidia/*/lib /usr/lib/python3*/dist-packages/nvidia/*/lib \
         /opt/conda/lib/python3*/site-packages/nvidia/*/lib "$HOME"/.local/lib/python3*/site-packages/nvidia/*/lib; do
  [ -d "$d" ] || continue
  if ls "$d"/libnvrtc.so* "$d"/libcublas.so* >/dev/null 2>&1; then extra="$extra:$d"; fi
done
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}$extra"
log "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
(ldconfig -p 2>/dev/null | grep -E 'libcuda\.so|libnvrtc\.so|libcublas\.so' ; \
 for d in ${extra//:/ }; do ls "$d"/libnvrtc.so* "$d"/libcublas.so* 2>/dev/null; done) | tee -a "$summary"

run_step() { # name timeout command...
  local name=$1 t=$2; shift 2
  log "== $name: $*"
  local start=$SECONDS
  timeout "$t" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  log "-- $name rc=$rc ($((SECONDS - start)) s)"
  grep -E '^\|' "$OUT/$name.txt" | tee -a "$summary" >/dev/null
  grep -E 'test result|skipping|panicked|mismatch|agree|FAILED' "$OUT/$name.txt" | tee -a "$summary" >/dev/null
}

smi_start() { # file
  nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv -lms 250 > "$1" 2>/dev/null &
  SMI=$!
}
smi_stop() { # file
  kill "$SMI" 2>/dev/null; wait "$SMI" 2>/dev/null
  awk -F', ' 'NR>1 && $3+0 > 0 {s+=$3; n++} END {if (n) printf "gpu utilisation: mean %.0f%% over %d busy samples\n", s/n, n; else print "gpu utilisation: no busy samples"}' "$1" | tee -a "$summary"
}

# --- 1. parity -----------------------------------------------------------------------------------
run_step parity 120 "$BIN/cuda_parity" --nocapture --test-threads=1

# --- 2. pure cuBLAS vs engine step ---------------------------------------------------------------
run_step gemm 90 "$BIN/cuda_parity" --ignored --exact measure_step_vs_pure_cublas --nocapture

# --- 3. in-process server under a closed-loop load -----------------------------------------------
smi_start "$OUT/nvsmi-serve.csv"
run_step serve $((SECS * 4 + 90)) \
  "$BIN/cuda_parity" --ignored --exact measure_server_under_load --nocapture
smi_stop "$OUT/nvsmi-serve.csv"

# --- 4. the real binary under wrk ----------------------------------------------------------------
WRK="$BIN/wrk"; [ -x "$WRK" ] || WRK=$(command -v wrk || true)
if [ -n "$WRK" ] && [ -x "$BIN/freelane-server" ]; then
  export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$PWD/$BIN/lib"
  port=18080
  for exec in cuda cpu; do
    for b in 1 8 32 128; do
      port=$((port + 1))
      "$BIN/freelane-server" --executor "$exec" --gpus 1 --max-batch-size "$b" --max-queue 4096 \
        --port "$port" --log-format json > "$OUT/server-$exec-$b.log" 2>&1 &
      srv=$!
      for _ in $(seq 100); do
        curl -sf "localhost:$port/health" >/dev/null 2>&1 && break
        kill -0 "$srv" 2>/dev/null || break
        sleep 0.1
      done
      if ! kill -0 "$srv" 2>/dev/null; then
        log "== $exec batch $b: server did not start: $(tail -n 1 "$OUT/server-$exec-$b.log")"
        continue
      fi
      [ "$exec" = cuda ] && smi_start "$OUT/nvsmi-wrk-$b.csv"
      d=$SECS; [ "$exec" = cpu ] && d=$(( (SECS + 1) / 2 ))
      log "== wrk $exec batch $b, 64-token requests, $b connections, ${d}s"
      timeout $((d + 20)) "$WRK" -t "$(( b < 8 ? b : 8 ))" -c "$b" -d "${d}s" --latency \
        -s reference-server/bench/gpu/completion64.lua "http://127.0.0.1:$port/v1/completions" \
        > "$OUT/wrk-$exec-$b-64tok.txt" 2>&1
      grep -E 'Requests/sec|Latency|50%|99%|Non-2xx' "$OUT/wrk-$exec-$b-64tok.txt" | tee -a "$summary"
      curl -s "localhost:$port/stats" | tee -a "$summary"; echo | tee -a "$summary"
      [ "$exec" = cuda ] && smi_stop "$OUT/nvsmi-wrk-$b.csv"
      log "== wrk $exec batch $b, 1-token requests (serving path), ${d}s"
      timeout $((d + 20)) "$WRK" -t "$(( b < 8 ? b : 8 ))" -c "$b" -d "${d}s" --latency \
        -s reference-server/bench/completion.lua "http://127.0.0.1:$port/v1/completions" \
        > "$OUT/wrk-$exec-$b-1tok.txt" 2>&1
      grep -E 'Requests/sec|50%|99%|Non-2xx' "$OUT/wrk-$exec-$b-1tok.txt" | tee -a "$summary"
      kill -TERM "$srv" 2>/dev/null; wait "$srv" 2>/dev/null
    done
  done
else
  log "== wrk step skipped (no wrk or no $BIN/freelane-server)"
fi
log "== done"
