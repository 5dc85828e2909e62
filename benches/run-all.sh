#!/usr/bin/env bash
# Runs every freelane benchmark once, one after another (never two at a time: they would disturb
# each other), and keeps each one's full output under $LOG_DIR. Used to take the numbers recorded
# in docs/BENCHMARKS.md. Needs `wrk` for the HTTP load test (apt-get install -y wrk).
#   bash benches/run-all.sh [LOG_DIR]            (default: target/bench-logs)
set -euo pipefail
cd "$(dirname "$0")/.."
LOG_DIR="${1:-target/bench-logs}"
mkdir -p "$LOG_DIR"
stamp() { date -u +%H:%M:%S; }

echo "[$(stamp)] building"
cargo bench -p freelane-benches --no-run 2>&1 | tail -1
cargo build --release -p freelane-benches --bin mt-scaling 2>&1 | tail -1
cargo build --release -p freelane-server --bin freelane-server --example hello 2>&1 | tail -1

for b in $(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' benches/Cargo.toml | grep -v mt-scaling); do
  [ -f "benches/benches/$b.rs" ] || continue
  echo "[$(stamp)] bench $b"
  cargo bench -p freelane-benches --bench "$b" > "$LOG_DIR/$b.log" 2>&1 || echo "bench $b failed (see $LOG_DIR/$b.log)"
done

echo "[$(stamp)] mt-scaling"
target/release/mt-scaling --json "$LOG_DIR/mt-scaling.json" --svg "$LOG_DIR/mt-scaling.svg" \
  > "$LOG_DIR/mt-scaling.log" 2>&1 || echo "mt-scaling failed (see $LOG_DIR/mt-scaling.log)"

if command -v wrk >/dev/null; then
  echo "[$(stamp)] http load test"
  target/release/examples/hello 127.0.0.1:8090 > /dev/null 2>&1 &
  hello=$!
  target/release/freelane-server --executor sim --sim-step-us 0 --gpus 2 --port 8091 \
    --log-level warn > /dev/null 2>&1 &
  server=$!
  sleep 2
  : > "$LOG_DIR/http.log"
  for round in 1 2 3; do
    for port in 8090 8091; do
      echo "## round $round port $port" >> "$LOG_DIR/http.log"
      wrk -t2 -c64 -d10s --latency -s reference-server/bench/completion.lua \
        "http://127.0.0.1:$port/v1/completions" >> "$LOG_DIR/http.log" 2>&1
    done
  done
  kill "$hello" "$server"
  wait "$hello" "$server" 2>/dev/null || true
else
  echo "wrk not found: http load test skipped"
fi
echo "[$(stamp)] done: $LOG_DIR"
