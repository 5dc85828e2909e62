#!/usr/bin/env bash
# Builds (here, on the x86-64 build machine, no GPU needed) everything run-gpu-checks.sh needs
# and gathers it in target/gpu-carry/ (ignored by git) so a device call can carry that one path:
#   freelane-server          release binary (cuda executor built in; CUDA libraries load at run time)
#   cuda_parity              release test binary (parity tests + ignored GPU measurement tests)
#   wrk, lib/libluajit*.so*  the HTTP load generator and its one uncommon library (if installed)
# Usage, from the repository root:  reference-server/bench/gpu/build-carry.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
out=target/gpu-carry
mkdir -p "$out/lib"
cargo build --release -p freelane-server --bin freelane-server
cp target/release/freelane-server "$out/"
# The test binary's file name carries a hash: ask cargo for it.
exe=$(cargo test --release -p freelane-server --test cuda_parity --no-run --message-format=json \
  | grep -o '"executable":"[^"]*cuda_parity[^"]*"' | tail -n1 | cut -d'"' -f4)
if [ -z "$exe" ] || [ ! -x "$exe" ]; then
  echo "build-carry: could not find the cuda_parity test binary" >&2
  exit 1
fi
cp "$exe" "$out/cuda_parity"
if command -v wrk >/dev/null; then
  cp "$(command -v wrk)" "$out/"
  for l in $(ldd "$(command -v wrk)" | awk '/luajit/ {print $3}'); do cp -L "$l" "$out/lib/"; done
fi
cp reference-server/bench/completion.lua "$out/" 2>/dev/null || true
strip --strip-debug "$out/freelane-server" "$out/cuda_parity" 2>/dev/null || true
du -sh "$out"
ls -la "$out" "$out/lib"
echo "now: run tool with carry [\"$out\"] and command 'bash reference-server/bench/gpu/run-gpu-checks.sh'"
