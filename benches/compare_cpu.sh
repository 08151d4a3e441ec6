#!/usr/bin/env bash
# fedclip's CPU engine against PyTorch and ONNX Runtime on the same machine, in one run: both
# towers at the ViT-B/32 shape (benches/cpu_encode.rs, benches/cpu_baselines.py), alternating
# sides twice so that a burst of load elsewhere hits both, plus the matrix-product peak measured
# in the same run; then the table (benches/compare_cpu_table.py). Usage:
#   PYTHON=/path/to/reference-venv/bin/python bash benches/compare_cpu.sh [ROUNDS]
# Extra fedclip variants: FEDCLIP_BENCH_VARIANTS="FEDCLIP_ISA=avx2 FEDCLIP_ISA=reference"
# runs the bench once more per entry with that environment setting (labelled in the table).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
log="${LOG:-target/compare_cpu.log}"
mkdir -p "$(dirname "$log")"
: > "$log"
{
  uptime
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
    "flags: $(grep -m1 -o -w -E 'avx512f|avx512_bf16|amx_tile|avx2' /proc/cpuinfo | sort -u | xargs)"
} | tee -a "$log"
cargo bench --bench cpu_encode --no-run 2>/dev/null
bench="$(cargo bench --bench cpu_encode --no-run --message-format=json 2>/dev/null |
  "$py" -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("target", {}).get("name") == "cpu_encode" and m.get("executable"): print(m["executable"])')"
for round in $(seq "${1:-2}"); do
  "$bench" | tee -a "$log"
  for variant in ${FEDCLIP_BENCH_VARIANTS:-}; do
    env "$variant" "$bench" | sed "s/^RESULT fedclip /RESULT fedclip[${variant#*=}] /" | tee -a "$log"
  done
  peak=$([ "$round" = 1 ] || echo --skip-peak)
  # OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (set on some machines for old OpenBLAS builds) slow the
  # sgemm peak of a current numpy: unset for this process only.
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$py" benches/cpu_baselines.py $peak 2>/dev/null | tee -a "$log"
done
uptime | tee -a "$log"
"$py" benches/compare_cpu_table.py "$log"
