#!/usr/bin/env bash
# Everything that needs a GPU, in one go, for a session that has one.
#
# The device machine has no Rust toolchain, so binaries are built here first and carried in the
# git-ignored .device-bin/ (about 15 MB, gzipped):
#
#   bash benches/run_on_device.sh prepare          # on the build machine
#
# then on the device machine, from the repository root (with the `run` tool:
# carry [".device-bin"]; each stage fits in its 10-minute limit):
#
#   bash benches/run_on_device.sh tests            # every tests/gpu_*.rs + kernels_compile
#   bash benches/run_on_device.sh ours             # gpu_encode (images/s, GEMM TFLOP/s), gpu_adapter
#   bash benches/run_on_device.sh torch            # transformers fp16 SDPA eager, same shapes;
#                                                  # the adapter step in PyTorch on the GPU
#   bash benches/run_on_device.sh torch-compile    # the same with torch.compile
#   bash benches/run_on_device.sh compare          # fedclip embed --device cuda vs transformers
#   bash benches/run_on_device.sh all              # all of the above (≈ 20 min)
#
# Arguments after a single stage go to its program, e.g. `ours b32 --batches 1,32` or
# `torch-compile --models l14` (to keep each call under 10 minutes).
#
# Output goes to stdout and to $OUT/<stage>.txt ($OUT defaults to ./device-results).
set -euo pipefail
cd "$(dirname "$0")/.."
stage="${1:-all}"
shift || true
extra=("$@") # passed on to the bench / python script of a single stage
BIN="$PWD/.device-bin"

prepare() {
    # The executables cargo builds, by target name, from its JSON messages.
    local json
    json="$(mktemp)"
    cargo build --release --bin fedclip --message-format=json >"$json"
    local tests=(--test kernels_compile)
    for t in tests/gpu_*.rs; do
        tests+=(--test "$(basename "$t" .rs)")
    done
    cargo test --release --no-run "${tests[@]}" --message-format=json >>"$json"
    cargo bench --no-run --bench gpu_encode --bench gpu_adapter --message-format=json >>"$json"
    rm -rf "$BIN"
    mkdir -p "$BIN"
    python3 - "$json" "$BIN" <<'PY'
import json, shutil, sys
seen = {}
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        name = m["target"]["name"]
        # The adapter's test and bench share the name gpu_adapter: benches get a prefix.
        if m["target"]["kind"] == ["bench"]:
            name = "bench_" + name
        seen[name] = m["executable"]
for name, exe in seen.items():
    if name in ("fedclip", "kernels_compile") or name.startswith(("gpu_", "bench_gpu_")):
        shutil.copy(exe, f"{sys.argv[2]}/{name}")
PY
    rm -f "$json"
    for f in "$BIN"/*; do
        strip --strip-debug "$f" 2>/dev/null || true
        gzip -9 "$f"
    done
    git rev-parse HEAD >"$BIN/commit" 2>/dev/null || true
    du -sh "$BIN"
    ls -l "$BIN"
}

if [ "$stage" = prepare ]; then
    prepare
    exit 0
fi

# ---- on the device machine ----
OUT="${OUT:-$PWD/device-results}"
mkdir -p "$OUT"
for gz in "$BIN"/*.gz; do
    [ -e "$gz" ] || { echo "no binaries in $BIN: run '$0 prepare' on the build machine" >&2; exit 1; }
    f="${gz%.gz}"
    [ -x "$f" ] || { gunzip -kf "$gz" && chmod +x "$f"; }
done
# Test binaries look for fixtures under the path they were built in (CARGO_MANIFEST_DIR).
built_in=/work/main
if [ ! -e "$built_in" ]; then
    mkdir -p "$(dirname "$built_in")" && ln -s "$PWD" "$built_in"
fi
# NVRTC: the loader path, else wherever a CUDA toolkit or pip wheel put it.
if ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so\.1[23]' && [ -z "${FEDCLIP_NVRTC:-}" ]; then
    found="$(find /usr/local /usr/lib /opt / -xdev -name 'libnvrtc.so.13' 2>/dev/null | head -n1 || true)"
    [ -n "$found" ] || found="$(find / -xdev -name 'libnvrtc.so.12' 2>/dev/null | head -n1 || true)"
    if [ -n "$found" ]; then export FEDCLIP_NVRTC="$found"; fi
fi
export FEDCLIP_CACHE_DIR="${FEDCLIP_CACHE_DIR:-/tmp/fedclip-kernel-cache}"
PY="${PYTHON:-python3}"

failed=()
# Runs one command of a stage; a failure is recorded and the script goes on with the rest.
run_stage() {
    local name="$1"
    shift
    echo "== $name: $*" | tee -a "$OUT/$name.txt"
    if ! "$@" 2>&1 | tee -a "$OUT/$name.txt"; then
        failed+=("$name: $*")
        echo "== FAILED: $*" | tee -a "$OUT/$name.txt"
    fi
}

device_info() {
    {
        date -u
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
        echo "FEDCLIP_NVRTC=${FEDCLIP_NVRTC:-<loader path>}"
        echo "binaries from commit $(cat "$BIN/commit" 2>/dev/null || echo '?')"
        "$PY" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)' 2>&1 || true
    } | tee "$OUT/device.txt"
}

do_tests() {
    run_stage tests "$BIN/kernels_compile" --nocapture --test-threads=1
    local t
    for t in "$BIN"/gpu_*; do
        [ -x "$t" ] || continue
        case "$t" in *.gz) continue ;; esac
        run_stage tests "$t" --nocapture --test-threads=1
    done
}
do_ours() {
    run_stage ours "$BIN/bench_gpu_encode" "${extra[@]}"
    run_stage ours "$BIN/bench_gpu_adapter"
}
do_torch() {
    run_stage torch "$PY" benches/torch_gpu_encode.py bench "${extra[@]}"
    run_stage torch "$PY" benches/torch_gpu_adapter.py
}
do_torch_compile() {
    run_stage torch-compile "$PY" benches/torch_gpu_encode.py bench --compile "${extra[@]}"
}
do_compare() {
    run_stage compare "$PY" benches/torch_gpu_encode.py compare --fedclip "$BIN/fedclip" "${extra[@]}"
}

device_info
case "$stage" in
    tests) do_tests ;;
    ours) do_ours ;;
    torch) do_torch ;;
    torch-compile) do_torch_compile ;;
    compare) do_compare ;;
    all) do_tests; do_ours; do_torch; do_compare; do_torch_compile ;;
    *) echo "unknown stage $stage (prepare|tests|ours|torch|torch-compile|compare|all)" >&2; exit 2 ;;
esac
if [ ${#failed[@]} -gt 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}" | tee -a "$OUT/failed.txt"
    exit 1
fi
