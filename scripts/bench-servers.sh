#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# bench-servers.sh: memkv's aggregate throughput against 1, 2 and 3 servers (issue 5).
#
# Builds build/release (Release; targets memkv-bench and memkv-server), then RUNS times (default
# 3) starts 1, then 2, then 3 fresh memkv-server processes on 127.0.0.1 (the order reversed on
# every other run, so that drift in the machine's load does not favour one count) and runs the
# same memkv-bench (same client threads and operations in flight; one TCP connection per
# (server, shard)) against each set. Prints the medians of the aggregate GiB/s per server count,
# block size and operation, with the ratio to 1 server.
#
# On a machine with few CPUs this does not scale: every server and the client share the same
# cores and the loopback device. docs/scaling.md explains why it scales across machines by
# design.
#
# Usage: scripts/bench-servers.sh [memkv-bench flags...]
#   e.g. STORE=file RUNS=5 scripts/bench-servers.sh --threads 8
# Environment: BUILD_DIR (build/release), RUNS (3), COUNTS ("1 2 3": server counts), SIZES
#   (64K,1M), CELL_SECONDS (3, per cell), THREADS (4), INFLIGHT (16), SHARDS (2 per server),
#   CAPACITY (2G per server), STORE (memory, or file: a store file per server under DATA_DIR),
#   DATA_DIR (BUILD_DIR; a scratch directory is created there and removed at exit), BUILD_JOBS
#   (nproc), RESULTS_DIR (BUILD_DIR/bench-servers: per-run JSON and logs kept there).
# Default run time: 3 runs x 3 server counts x 4 cells x 3 s plus start-up, about 2-3 minutes.
# Exit status: 0 when every memkv-bench run succeeded, 1 otherwise (the table is printed
# anyway), 2 on bad settings.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD_DIR=${BUILD_DIR:-build/release}
RUNS=${RUNS:-3}
COUNTS=${COUNTS:-1 2 3}
SIZES=${SIZES:-64K,1M}
SECONDS_PER_CELL=${CELL_SECONDS:-3}
THREADS=${THREADS:-4}
INFLIGHT=${INFLIGHT:-16}
SHARDS=${SHARDS:-2}
CAPACITY=${CAPACITY:-2G}
STORE=${STORE:-memory}
DATA_DIR=${DATA_DIR:-$BUILD_DIR}
BUILD_JOBS=${BUILD_JOBS:-$(nproc)}
RESULTS_DIR=${RESULTS_DIR:-$BUILD_DIR/bench-servers}
BENCH_ARGS=("$@")

log() { echo "bench-servers: $*" >&2; }

for tool in cmake ninja python3; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "'$tool' is required (scripts/install-deps.sh)"
        exit 1
    fi
done
for n in RUNS SECONDS_PER_CELL THREADS INFLIGHT SHARDS BUILD_JOBS; do
    if ! [[ ${!n} =~ ^[1-9][0-9]*$ ]]; then
        log "$n must be a positive integer (got '${!n}')"
        exit 2
    fi
done
read -r -a counts <<<"$COUNTS"
for n in "${counts[@]}"; do
    if ! [[ $n =~ ^[1-9][0-9]*$ ]]; then
        log "COUNTS must be positive integers (got '$COUNTS')"
        exit 2
    fi
done
if [[ $STORE != memory && $STORE != file ]]; then
    log "STORE must be 'memory' or 'file' (got '$STORE')"
    exit 2
fi

# shellcheck source=scripts/server-lib.sh
source "scripts/server-lib.sh"
pids=()
scratch=""
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    stop_pids
    if [[ -n "$scratch" && -d "$scratch" ]]; then rm -rf "$scratch"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- build -----------------------------------------------------------------------------------
log "building $BUILD_DIR (Release)"
build_bench_tools "$BUILD_DIR" "$BUILD_JOBS"

rm -rf "$RESULTS_DIR"
mkdir -p "$RESULTS_DIR"
RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)
if [[ $STORE == file ]]; then
    mkdir -p "$DATA_DIR"
    scratch=$(mktemp -d "$(cd "$DATA_DIR" && pwd)/memkv-bench-servers.XXXXXX")
    log "store files under $scratch ($(df -PT "$scratch" | awk 'NR == 2 { print $2 }'))"
fi

# Starts server $2 of run-and-count tag $1 and sets `endpoint`. Returns non-zero on failure.
endpoint=""
start_server() {
    local tag=$1 i=$2
    local store_args=(--store memory)
    if [[ $STORE == file ]]; then
        rm -f "$scratch/store-$i"
        store_args=(--store file --path "$scratch/store-$i")
    fi
    if ! start_memkv_server "$server" "$RESULTS_DIR/server-$tag-$i.port" \
        "$RESULTS_DIR/server-$tag-$i.log" --shards "$SHARDS" --capacity "$CAPACITY" \
        "${store_args[@]}"; then
        log "memkv-server did not start (see $RESULTS_DIR/server-$tag-$i.log)"
        return 1
    fi
    endpoint=$server_endpoint
}


# Runs memkv-bench against $2 fresh servers; $1: run number. Non-zero on failure.
run_count() {
    local run=$1 n=$2 tag="$1-$2" i endpoints=() status=0
    for i in $(seq 1 "$n"); do
        if ! start_server "$tag" "$i"; then
            stop_pids
            return 1
        fi
        endpoints+=("$endpoint")
    done
    local list
    list=$(IFS=,; echo "${endpoints[*]}")
    log "run $run/$RUNS: $n server(s) [$list]: memkv-bench --sizes $SIZES" \
        "--threads $THREADS --inflight $INFLIGHT"
    "$bench" --servers "$list" --sizes "$SIZES" --ops write,read --threads "$THREADS" \
        --inflight "$INFLIGHT" --duration-ms "$((SECONDS_PER_CELL * 1000))" \
        --json "$RESULTS_DIR/memkv-$tag.json" "${BENCH_ARGS[@]}" >"$RESULTS_DIR/memkv-$tag.txt" \
        2> >(tee "$RESULTS_DIR/memkv-$tag.log" >&2) || status=$?
    stop_pids
    if [[ $STORE == file ]]; then rm -f "$scratch"/store-*; fi
    return "$status"
}

failed=0
for run in $(seq 1 "$RUNS"); do
    order=("${counts[@]}")
    if ((run % 2 == 0)); then
        order=()
        for ((i = ${#counts[@]} - 1; i >= 0; i--)); do order+=("${counts[i]}"); done
    fi
    for n in "${order[@]}"; do
        if ! run_count "$run" "$n"; then
            log "run $run/$RUNS: $n server(s): memkv-bench failed or reported errors" \
                "(see $RESULTS_DIR/memkv-$run-$n.txt)"
            failed=1
        fi
    done
done

# ---- report --------------------------------------------------------------------------------------
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
echo
echo "Machine: $(nproc) CPUs ($cpu), Linux $(uname -r); the client and all servers share them" \
    "(loopback TCP)."
echo "Servers: memkv-server processes on 127.0.0.1, $SHARDS shards each, $CAPACITY $STORE store" \
    "each; client: memkv-bench, $THREADS threads x $INFLIGHT in flight whatever the server" \
    "count; ${SECONDS_PER_CELL} s per cell."
echo "Medians of $RUNS runs (server counts in alternating order)."
python3 - "$RESULTS_DIR" "$RUNS" "${counts[@]}" <<'EOF'
import json, os, statistics, sys

results, runs, counts = sys.argv[1], int(sys.argv[2]), [int(x) for x in sys.argv[3:]]
cells, errors, info = {}, {}, {}
for r in range(1, runs + 1):
    for n in counts:
        path = os.path.join(results, f"memkv-{r}-{n}.json")
        if not os.path.exists(path):
            continue
        d = json.load(open(path))
        info.setdefault(n, d)
        for c in d["cells"]:
            k = (n, c["size"], c["op"])
            cells.setdefault(k, []).append(c["gib_per_s"])
            errors[k] = errors.get(k, 0) + c["errors"] + c["misses"] + c["verify_failures"]

def label(n):
    if n % 2**20 == 0: return f"{n >> 20} MiB"
    if n % 2**10 == 0: return f"{n >> 10} KiB"
    return f"{n} B"

def med(k):
    v = cells.get(k)
    return statistics.median(v) if v else None

if info:
    d = next(iter(info.values()))
    s = (d.get("server_info") or [{}])[0]
    print(f"Server store: {s.get('store', '?')}, O_DIRECT "
          f"{ {True: 'yes', False: 'no', None: 'unknown'}.get(s.get('direct_io'), '?') }, "
          f"bounce buffers on hugepages "
          f"{ {True: 'yes', False: 'no', None: 'unknown'}.get(s.get('hugepages'), '?') }.")
print()
print("| servers | connections | block | write GiB/s | read GiB/s | write vs 1 server "
      "| read vs 1 server | errors |")
print("|---|---|---|---|---|---|---|---|")
base = min(counts)
for size in sorted({k[1] for k in cells}):
    for n in counts:
        w, r = med((n, size, "write")), med((n, size, "read"))
        bw, br = med((base, size, "write")), med((base, size, "read"))
        ratio = lambda x, b: "-" if x is None or not b else f"{x / b:.2f}x"
        errs = errors.get((n, size, "write"), 0) + errors.get((n, size, "read"), 0)
        conns = info[n]["connections"] if n in info else "-"
        f2 = lambda x: "-" if x is None else f"{x:.2f}"
        print(f"| {n} | {conns} | {label(size)} | {f2(w)} | {f2(r)} | {ratio(w, bw)} "
              f"| {ratio(r, br)} | {errs} |")
print()
print("Per run (GiB/s):")
for size in sorted({k[1] for k in cells}):
    for n in counts:
        for op in ("write", "read"):
            v = cells.get((n, size, op), [])
            print(f"  {n} server(s) {label(size):>7} {op:5}: " + ", ".join(f"{x:.2f}" for x in v))
EOF
echo
echo "Per-run JSON and logs: $RESULTS_DIR"
exit "$failed"
