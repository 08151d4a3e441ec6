#!/usr/bin/env bash
# The GPU proof in one device call: every kernel first, then the towers, the transformers
# gate, the benches against PyTorch, the adapter, the whole run, and extras as time allows.
#
#   bash benches/device_check.sh prepare   # here: build, pack .device-bin/, print the run call
#   bash benches/device_check.sh plan      # the stages, their limits, `total` for stages 0-7
#   bash benches/device_check.sh run [STAGE...]   # there (all stages, or only those named)
#
# `run` stays under RUN_LIMIT (540 s): each stage runs under `timeout -k 5 <limit>`, appends
# `stage rc seconds` to $OUT/summary.tsv as it ends, and one that would start past START_BY
# (480 s) is recorded as skipped. A failing test stage reruns just its failing tests with
# CUDA_LAUNCH_BLOCKING=1 FEDCLIP_CUDA_SYNC=1 (same seed), inside its limit, so a fault names
# its kernel. The tool brings back at most 8 files from $OUT, so a stage writes
# $OUT/<stage>.txt while it runs; finished, it moves into $OUT/stages.tar and is appended to
# $OUT/log.txt. Without a GPU every GPU stage is skipped and `run` exits 0 (.ci/run does this).
#
# The device machine has no Rust toolchain: the binaries come built in .device-bin/ (carried;
# git-ignored); fixtures travel with the working tree, and the test binaries find them
# through the path they were built in, linked to the tree there.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT="$PWD"
SELF="$ROOT/benches/device_check.sh"
BIN="$ROOT/.device-bin"
RUN_LIMIT=540
START_BY="${DEVICE_CHECK_START_BY:-480}" # overridable only to test the skipping
CARRY_MAX_MIB=48
TREE_MAX_MIB=64
# Oldest glibc the binaries may need: the device's image is not this machine's distro
# (python3 3.12.3 there suggests Ubuntu 24.04, glibc 2.39; 2.35 keeps a margin).
DEVICE_GLIBC=2.35

# name|limit seconds|what. Stages 0-7 must fit START_BY; 8x run as time allows.
STAGES=(
    "0|20|device facts: nvidia-smi, driver (cuDriverGetVersion), NVRTC, compute capability"
    "1|75|gpu_kernels: every kernel against its CPU twin"
    "2|60|gpu_towers without the large shapes: tiny models, ViT-B/32 both towers, embed jobs"
    "3|90|compare: fedclip embed --device cuda, ViT-B/32 random weights, vs transformers fp32 (gate) and fp16"
    "4|45|our encode bench ViT-B/32 batch 1/32/256/1024"
    "5|45|PyTorch fp16 (eager, SDPA) on the same batches"
    "6|100|gpu_adapter, then the adapter bench against PyTorch at K = 1 and K = 1000"
    "7|45|gpu_run: fedclip run on the GPU against the CPU run"
    "8g|45|GEMM TFLOP/s on every ViT GEMM shape: v1 and v2 tiles, cuBLAS (cublasGemmEx); attention v1 and v2"
    "8e|45|end-to-end encode from JPEG (data/pacs-mini, ViT-B/32): decoding ahead vs in turn, decode only, encode only"
    "8p|40|per-kernel time table of one ViT-B/32 batch-1024 forward (CUDA events per launch)"
    "8a|70|gpu_towers larger towers (B/16, L/14, L/14-336)"
    "8b|80|encode benches B/16, L/14: ours, then PyTorch"
    "8c|60|compute-sanitizer racecheck and memcheck on a gpu_kernels subset"
    "8d|120|torch.compile benches: encode ViT-B/32, the adapter step"
)

stage_field() {
    local s
    for s in "${STAGES[@]}"; do
        [ "${s%%|*}" = "$1" ] && { cut -d'|' -f"$2" <<<"$s"; return; }
    done
}

plan() {
    local s total=0 name limit
    printf '%-4s %6s  %s\n' stage limit what
    for s in "${STAGES[@]}"; do
        IFS='|' read -r name limit what <<<"$s"
        printf '%-4s %5ss  %s\n' "$name" "$limit" "$what"
        case "$name" in 8*) ;; *) total=$((total + limit)) ;; esac
    done
    echo "total $total"
    echo "(stages 0-7; none starts past ${START_BY} s, the command ends by ${RUN_LIMIT} s)"
}

# ---------------------------------------------------------------- prepare (build machine)

prepare() {
    set -e
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
    local glibc
    glibc="$(glibc_check)" || { echo "$glibc" >&2; exit 1; }
    echo "$glibc"
    for f in "$BIN"/*; do
        strip --strip-debug "$f" 2>/dev/null || true
        gzip -9 "$f"
    done
    echo "$glibc" | head -n1 >"$BIN/glibc"
    git rev-parse HEAD >"$BIN/commit" 2>/dev/null || echo unknown >"$BIN/commit"
    git status --porcelain --untracked-files=no | wc -l | tr -d ' ' >"$BIN/dirty"
    echo "$ROOT" >"$BIN/built_in"
    set +e
    size_check || exit 1
    echo
    echo "Now, in the session that has the device, one call of the run tool:"
    echo "  command:   bash benches/device_check.sh run"
    echo "  carry:     [\".device-bin\"]"
    echo "  timeout_s: $((RUN_LIMIT + 20))"
    echo "Then read \$OUT/summary.tsv and \$OUT/log.txt; rerun chosen stages with e.g."
    echo "  bash benches/device_check.sh run 1 3"
}

# The highest GLIBC_x.y symbol version each binary needs, against DEVICE_GLIBC.
glibc_check() {
    local f need worst=0.0 bad=0
    for f in "$BIN"/*; do
        need="$(objdump -T "$f" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)"
        [ -n "$need" ] || need=unknown
        if [ "$need" != unknown ] && [ "$(printf '%s\n%s\n' "$need" "$DEVICE_GLIBC" | sort -V | tail -n1)" != "$DEVICE_GLIBC" ]; then
            bad=1
        fi
        if [ "$need" != unknown ] && [ "$(printf '%s\n%s\n' "$need" "$worst" | sort -V | tail -n1)" = "$need" ]; then
            worst="$need"
        fi
    done
    echo "glibc: the binaries need GLIBC_$worst at most (built against $(ldd --version 2>/dev/null | head -n1 | grep -o '[0-9.]*$')); the device is assumed to have $DEVICE_GLIBC or newer"
    if [ "$bad" = 1 ]; then
        echo "prepare: a binary needs a glibc newer than $DEVICE_GLIBC; build on an older distro"
        return 1
    fi
}

size_check() {
    local carry tree
    carry=$(du -sb "$BIN" | cut -f1)
    tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -n1 | cut -f1)
    ls -l "$BIN"
    echo "carry .device-bin: $((carry >> 20)) MiB (limit $CARRY_MAX_MIB); working tree $((tree >> 20)) MiB; together $(((carry + tree) >> 20)) MiB (limit $TREE_MAX_MIB)"
    if [ $((carry >> 20)) -ge "$CARRY_MAX_MIB" ] || [ $(((carry + tree) >> 20)) -ge "$TREE_MAX_MIB" ]; then
        echo "prepare: too large to travel" >&2
        return 1
    fi
}

# ---------------------------------------------------------------- run (device machine)

have_gpu() {
    # DEVICE_CHECK_EMULATE=1: a dry run of the stages on the host emulator (tests the script).
    [ "${DEVICE_CHECK_EMULATE:-}" = 1 ] && { export FEDCLIP_EMULATE=1; return 0; }
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'
}

# NVRTC: pip wheels under every site-packages directory, then the usual CUDA folders; all
# go on the loader path (13 before 12) and fedclip picks the one the driver can load.
nvrtc_dirs() { lib_dirs libnvrtc; }

# The directories holding <lib>.so.13 or .so.12 (13 first): pip wheels, then CUDA folders.
lib_dirs() {
    local lib="$1" sp=() d
    mapfile -t sp < <("${PY:-python3}" -c 'import site, sys; print("\n".join(site.getsitepackages() + [site.getusersitepackages()] + sys.path))' 2>/dev/null | sort -u)
    for ver in 13 12; do
        for d in "${sp[@]}"; do
            for f in "$d"/nvidia/*/lib/"$lib".so."$ver"; do
                [ -e "$f" ] && dirname "$f"
            done
        done
        for f in /usr/local/cuda/lib64/"$lib".so."$ver" /usr/local/cuda-*/lib64/"$lib".so."$ver" \
            /usr/local/cuda*/targets/x86_64-linux/lib/"$lib".so."$ver" /usr/lib/x86_64-linux-gnu/"$lib".so."$ver"; do
            [ -e "$f" ] && dirname "$f"
        done
    done | awk '!seen[$0]++'
}

setup_env() {
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
    export FEDCLIP_CACHE_DIR="${FEDCLIP_CACHE_DIR:-/tmp/fedclip-kernel-cache}"
    export PY="${PYTHON:-python3}"
    local dirs
    dirs="$(nvrtc_dirs | paste -sd:)"
    [ -n "$dirs" ] && export LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # One seed for the whole run, so a rerun of a failing test replays its inputs.
    export FEDCLIP_TEST_SEED="${FEDCLIP_TEST_SEED:-$(od -An -N6 -tu8 /dev/urandom | tr -d ' ')}"
}

unpack_bins() {
    [ -e "$BIN/commit" ] || { echo "no binaries in $BIN: run '$0 prepare' on the build machine and carry .device-bin" >&2; return 1; }
    local gz f
    for gz in "$BIN"/*.gz; do
        f="${gz%.gz}"
        [ -x "$f" ] || { gunzip -kf "$gz" && chmod +x "$f"; } || return 1
    done
    # The test binaries read fixtures under the path they were built in.
    local built_in
    built_in="$(cat "$BIN/built_in")"
    if [ "$built_in" != "$ROOT" ] && [ ! -e "$built_in" ]; then
        mkdir -p "$(dirname "$built_in")" && ln -s "$ROOT" "$built_in"
    fi
}

# Runs a test binary; on failure reruns each failing test alone with blocking launches.
test_binary() {
    local bin="$1"
    shift
    local log
    log="$(mktemp)"
    # TEST_LIMIT (seconds) caps the test run inside its stage, so that what the stage runs
    # after it still gets its time.
    if [ -n "${TEST_LIMIT:-}" ]; then
        timeout -k 5 "$TEST_LIMIT" "$BIN/$bin" --test-threads=4 --nocapture "$@" 2>&1 | tee "$log"
    else
        "$BIN/$bin" --test-threads=4 --nocapture "$@" 2>&1 | tee "$log"
    fi
    local rc=${PIPESTATUS[0]}
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        echo "== $bin stopped at its limit of ${TEST_LIMIT}s (rc $rc)"
    fi
    if [ "$rc" != 0 ]; then
        local failed
        # The names under the last `failures:` heading (libtest lists them there).
        failed="$(awk '/^failures:$/ {list = ""; next} /^    [A-Za-z0-9_:]+$/ {list = list " " $1} END {print list}' "$log")"
        for t in $failed; do
            echo "== rerun of $bin $t with CUDA_LAUNCH_BLOCKING=1 FEDCLIP_CUDA_SYNC=1 (seed $FEDCLIP_TEST_SEED)"
            CUDA_LAUNCH_BLOCKING=1 FEDCLIP_CUDA_SYNC=1 "$BIN/$bin" --exact "$t" --test-threads=1 --nocapture 2>&1
        done
    fi
    rm -f "$log"
    return "$rc"
}

facts() {
    date -u
    echo "binaries from commit $(cat "$BIN/commit" 2>/dev/null || echo '?') ($(cat "$BIN/dirty" 2>/dev/null || echo '?') tracked files modified)"
    cat "$BIN/glibc" 2>/dev/null || echo "glibc: the binaries' need is unknown (no .device-bin)"
    ldd --version 2>&1 | head -n1
    uname -a
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi 2>&1
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,compute_cap --format=csv 2>&1
    else
        echo "nvidia-smi: not on the PATH"
    fi
    echo "LD_LIBRARY_PATH (NVRTC search) = ${LD_LIBRARY_PATH:-}"
    echo "FEDCLIP_TEST_SEED=$FEDCLIP_TEST_SEED"
    "$PY" - <<'PY' 2>&1 || true
import ctypes, glob, os
try:
    cuda = ctypes.CDLL("libcuda.so.1")
    v = ctypes.c_int()
    cuda.cuDriverGetVersion(ctypes.byref(v))
    print(f"cuDriverGetVersion: {v.value // 1000}.{v.value % 1000 // 10}")
except OSError as e:
    print(f"libcuda.so.1: {e}")
for d in os.environ.get("LD_LIBRARY_PATH", "").split(":"):
    for f in sorted(glob.glob(os.path.join(d, "libnvrtc.so.1[23]"))):
        try:
            lib = ctypes.CDLL(f)
            a, b = ctypes.c_int(), ctypes.c_int()
            lib.nvrtcVersion(ctypes.byref(a), ctypes.byref(b))
            print(f"NVRTC {a.value}.{b.value}: {f}")
        except OSError as e:
            print(f"{f}: {e}")
try:
    import torch, transformers
    print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(f"{p.name}: compute capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
              f"{p.total_memory / 2**30:.0f} GiB")
except ImportError as e:
    print("torch / transformers:", e)
PY
    if [ -x "$BIN/fedclip" ] || [ -e "$BIN/fedclip.gz" ]; then
        "$BIN/fedclip" --version 2>&1 || echo "the fedclip binary does not run here (glibc?)"
    fi
}

# The body of each stage (run under timeout by run_stage).
stage_body() {
    case "$1" in
        0) facts ;;
        1) test_binary gpu_kernels ;;
        2) test_binary gpu_towers --skip larger_vision_towers ;;
        3) "$PY" "$ROOT/benches/torch_gpu_encode.py" compare --models b32 --fedclip "$BIN/fedclip" ;;
        4) "$BIN/bench_gpu_encode" b32 --batches 1,32,256,1024 --no-gemm ;;
        5) "$PY" "$ROOT/benches/torch_gpu_encode.py" bench --models b32 --batches 1,32,256,1024 ;;
        6)
            local rc=0
            # The test's host error model is heavy at the GPU's sizes (printed per case as
            # "error model … s on the host"): capped so that the benches keep 40 s.
            TEST_LIMIT=55 test_binary gpu_adapter || rc=$?
            "$BIN/bench_gpu_adapter" one many --clients 1000 || rc=$?
            "$PY" "$ROOT/benches/torch_gpu_adapter.py" one many --clients 1000 --modes eager,graph || rc=$?
            return "$rc"
            ;;
        7) test_binary gpu_run ;;
        8g)
            # cuBLAS from the pip wheels (torch's), for this bench only.
            local dirs
            dirs="$(lib_dirs libcublas | paste -sd:)"
            LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
                "$BIN/bench_gpu_encode" --no-encode --gemm v1,v2,cublas
            ;;
        8e) "$BIN/bench_gpu_encode" --from-jpeg "$ROOT/data/pacs-mini" --images 2048 --batches 256,1024 ;;
        8p) "$BIN/bench_gpu_encode" b32 --batches 1024 --no-gemm --profile ;;
        8a) test_binary gpu_towers larger_vision_towers ;;
        8b)
            local rc=0
            "$BIN/bench_gpu_encode" b16 l14 --batches 1,32,256 --no-gemm || rc=$?
            "$PY" "$ROOT/benches/torch_gpu_encode.py" bench --models b16,l14 --batches 1,32,256 || rc=$?
            return "$rc"
            ;;
        8c)
            command -v compute-sanitizer >/dev/null || { echo "compute-sanitizer: not on the PATH"; return 3; }
            local rc=0 tool
            for tool in racecheck memcheck; do
                echo "== compute-sanitizer --tool $tool"
                # The emulator's small cases: GEMM v1 and v2 (cp.async, ldmatrix, mma), LayerNorm,
                # both attention kernels.
                FEDCLIP_SMALL_CASES=1 compute-sanitizer --tool "$tool" --error-exitcode 9 \
                    "$BIN/gpu_kernels" --test-threads=1 gemm_residual ldmatrix layernorm attention_matches || rc=$?
            done
            return "$rc"
            ;;
        8d)
            local rc=0
            "$PY" "$ROOT/benches/torch_gpu_encode.py" bench --compile --models b32 --batches 32,256 || rc=$?
            "$PY" "$ROOT/benches/torch_gpu_adapter.py" one many --clients 1000 --modes compile || rc=$?
            return "$rc"
            ;;
        *) echo "unknown stage $1" >&2; return 2 ;;
    esac
}

run_stage() { # run_stage <name> <limit> <start time>
    local name="$1" limit="$2" t0="$3" now
    now=$(($(date +%s) - t0))
    if [ "$now" -gt "$START_BY" ]; then
        printf '%s\tskipped\t0\n' "$name" >>"$OUT/summary.tsv"
        echo "== stage $name: skipped (would start at ${now} s, past ${START_BY} s)" | tee -a "$OUT/log.txt"
        return
    fi
    # Never past RUN_LIMIT - 5 (the kill margin).
    [ $((now + limit)) -gt $((RUN_LIMIT - 5)) ] && limit=$((RUN_LIMIT - 5 - now))
    local file="$OUT/$name.txt" start rc
    start=$(date +%s)
    echo "== stage $name (limit ${limit} s, at ${now} s): $(stage_field "$name" 3)" >"$file"
    timeout -k 5 "$limit" bash "$SELF" _stage "$name" >>"$file" 2>&1
    rc=$?
    [ "$rc" = 124 ] && echo "== stage $name: timed out after ${limit} s" >>"$file"
    local took=$(($(date +%s) - start))
    printf '%s\t%s\t%s\n' "$name" "$rc" "$took" >>"$OUT/summary.tsv"
    echo "== stage $name: rc $rc in ${took} s" >>"$file"
    cat "$file" >>"$OUT/log.txt"
    tar -rf "$OUT/stages.tar" -C "$OUT" "$name.txt" && rm -f "$file"
    tail -n 3 "$OUT/log.txt"
}

skip_stage() { # skip_stage <name> <why>
    printf '%s\tskipped\t0\n' "$1" >>"$OUT/summary.tsv"
    echo "== stage $1: skipped ($2)" >>"$OUT/log.txt"
}

run() {
    local t0
    t0=$(date +%s)
    OUT="${OUT:-$ROOT/device-results}"
    mkdir -p "$OUT"
    : >"$OUT/summary.tsv"
    : >"$OUT/log.txt"
    rm -f "$OUT/stages.tar"
    setup_env
    local want=("$@") s name limit gpu=1 why=""
    if ! have_gpu; then
        gpu=0
        why="no GPU"
    elif ! unpack_bins; then
        gpu=0
        why="no binaries: run prepare and carry .device-bin"
    fi
    for s in "${STAGES[@]}"; do
        IFS='|' read -r name limit _ <<<"$s"
        if [ ${#want[@]} -gt 0 ] && [[ " ${want[*]} " != *" $name "* ]]; then
            continue
        fi
        if [ "$name" = 0 ] || [ "$gpu" = 1 ]; then
            run_stage "$name" "$limit" "$t0"
        else
            skip_stage "$name" "$why"
        fi
    done
    echo "== summary (stage rc seconds), $(($(date +%s) - t0)) s in all"
    cat "$OUT/summary.tsv"
    if [ "$gpu" = 0 ]; then
        echo "no GPU stage ran: $why"
        [ "$why" = "no GPU" ] || return 1
    fi
    # Non-zero when a stage that ran failed (skipped ones do not count).
    ! awk -F'\t' '$2 != "0" && $2 != "skipped" {bad = 1} END {exit !bad}' "$OUT/summary.tsv"
}

# Dispatch only when executed (sourcing it gives the functions, for trying them out).
[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0
case "${1:-}" in
    prepare) prepare ;;
    plan) plan ;;
    run) shift; run "$@" ;;
    _stage) stage_body "$2" ;; # environment from run
    *) echo "usage: $0 prepare|plan|run [STAGE...]" >&2; exit 2 ;;
esac
