#!/usr/bin/env bash
# fedclip's CPU engine vs PyTorch on the same machine, in one run. Usage:
#   PYTHON=/path/to/reference-venv/bin/python bash benches/compare_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
uptime
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
cargo bench --bench cpu_encode --no-run 2>/dev/null
# Twice each, alternating, so that a burst of load elsewhere hits both sides.
for _ in 1 2; do
  cargo bench --bench cpu_encode 2>/dev/null
  "${PYTHON:-python3}" benches/torch_cpu_encode.py
done
