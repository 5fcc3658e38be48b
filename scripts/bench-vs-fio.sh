#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# bench-vs-fio.sh: memkv's file store next to what fio gets from the same filesystem.
#
# Builds build/release (Release; targets memkv-bench and memkv-server), creates a scratch
# directory under DATA_DIR (the filesystem under test), then RUNS times (default 3) runs the pair
#   (a) memkv-bench against a freshly started `memkv-server --store file --path DIR/store`
#       (a new store file each run), for each block size write then read over
#       WORKING_SET / block size keys, THREADS client threads x INFLIGHT operations in flight
#       (queue depth THREADS x INFLIGHT), CELL_SECONDS per cell; and
#   (b) fio --direct=1 --ioengine=io_uring on DIR/fio.dat (WORKING_SET bytes), for each block
#       size rw=write then rw=read, numjobs=THREADS x iodepth=INFLIGHT (the same total queue
#       depth), time_based, CELL_SECONDS per cell, each job on its own slice of the file,
# alternating which of the two goes first from run to run, and prints the medians side by side
# with the ratio memkv/fio per block size and operation, and whether memkv's store used O_DIRECT
# (as the server reports it in its stats). The issue's target: memkv at least 85% of fio at
# 1 MiB and above, reads and writes.
#
# Differences that remain: memkv goes through loopback TCP and its server (client and server
# share the CPUs); its store is log-structured, so writes append and, once the store is full,
# evict whole regions (not punched: a file store's default, --trim off) while fio overwrites its
# file in place; the server moves a value through 1 MiB bounce buffers (64 per shard), so the
# device may see more, smaller I/Os in flight than the client's queue depth (reads above 100% of
# fio can come from that). Both read WORKING_SET bytes (on a VM the host may cache a small one
# even under O_DIRECT, so keep them equal).
#
# Usage: scripts/bench-vs-fio.sh [memkv-bench flags...] (not --sizes, --threads, --inflight,
#   --duration-ms, --key-space: the script sets them)
#   e.g. DATA_DIR=/mnt/nvme RUNS=5 scripts/bench-vs-fio.sh
# Environment: BUILD_DIR (build/release), DATA_DIR (BUILD_DIR: the filesystem to test; a
#   scratch directory is created in it and removed at exit), RUNS (3), SIZES (1M,4M,16M),
#   THREADS (2), INFLIGHT (4), CELL_SECONDS (5, per cell), SHARDS (2), CAPACITY (8G, the
#   store file; at least 2 x WORKING_SET), WORKING_SET (2G: fio's file, and memkv's key space
#   per block size), BUILD_JOBS (nproc), RESULTS_DIR
#   (BUILD_DIR/bench-vs-fio: per-run JSON and logs kept there), SERVER_ARGS (extra
#   memkv-server flags, e.g. SERVER_ARGS='--trim on'), LAYOUT (1: write the store file with
#   zeros before the server starts, as fio lays out its file before its jobs; 0: a fresh,
#   fallocate'd store file whose first pass is part of the first write cell).
# Default run time: about 3 runs x (6 memkv cells + 6 fio cells) x 5 s plus start-up and the
# store's layout (CAPACITY written once per run), ~5-6 min.
# Exit status: 0 when every memkv-bench and fio run succeeded, 1 otherwise (the table is printed
# anyway), 2 on bad settings.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD_DIR=${BUILD_DIR:-build/release}
DATA_DIR=${DATA_DIR:-$BUILD_DIR}
RUNS=${RUNS:-3}
SIZES=${SIZES:-1M,4M,16M}
THREADS=${THREADS:-2}
INFLIGHT=${INFLIGHT:-4}
SECONDS_PER_CELL=${CELL_SECONDS:-5}
SHARDS=${SHARDS:-2}
CAPACITY=${CAPACITY:-8G}
WORKING_SET=${WORKING_SET:-2G}
LAYOUT=${LAYOUT:-1}
BUILD_JOBS=${BUILD_JOBS:-$(nproc)}
RESULTS_DIR=${RESULTS_DIR:-$BUILD_DIR/bench-vs-fio}
BENCH_ARGS=("$@")
read -r -a server_args <<<"${SERVER_ARGS:-}"

log() { echo "bench-vs-fio: $*" >&2; }

for tool in cmake ninja fio python3 df; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "'$tool' is required (scripts/install-deps.sh, or apt-get install fio)"
        exit 1
    fi
done
if [[ $LAYOUT != 0 && $LAYOUT != 1 ]]; then
    log "LAYOUT must be 0 or 1 (got '$LAYOUT')"
    exit 2
fi
for n in RUNS THREADS INFLIGHT SECONDS_PER_CELL SHARDS BUILD_JOBS; do
    if ! [[ ${!n} =~ ^[1-9][0-9]*$ ]]; then
        log "$n must be a positive integer (got '${!n}')"
        exit 2
    fi
done

# Sizes as fio and memkv-bench take them (K/M/G, powers of 1024) and in bytes.
to_bytes() {
    python3 -c 'import re, sys
m = re.fullmatch(r"(\d+)([KMGT]?)(i?B)?", sys.argv[1].strip(), re.I)
if not m: sys.exit(1)
print(int(m.group(1)) << (10 * " KMGT".index((m.group(2) or " ").upper())))' "$1"
}
IFS=',' read -r -a sizes <<<"$SIZES"
for s in "${sizes[@]}"; do
    if ! to_bytes "$s" >/dev/null; then
        log "bad size '$s' in SIZES"
        exit 2
    fi
done
capacity_bytes=$(to_bytes "$CAPACITY") || { log "bad CAPACITY '$CAPACITY'"; exit 2; }
ws_bytes=$(to_bytes "$WORKING_SET") || { log "bad WORKING_SET '$WORKING_SET'"; exit 2; }

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
mkdir -p "$RESULTS_DIR" "$DATA_DIR"
RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)
scratch=$(mktemp -d "$(cd "$DATA_DIR" && pwd)/memkv-bench-vs-fio.XXXXXX")
need=$((capacity_bytes + ws_bytes + (1 << 30)))
avail=$(($(df -Pk "$scratch" | awk 'NR == 2 { print $4 }') * 1024))
if ((avail < need)); then
    log "$scratch has $((avail >> 20)) MiB free; CAPACITY + WORKING_SET + 1 GiB need" \
        "$((need >> 20)) MiB (set DATA_DIR, CAPACITY or WORKING_SET)"
    exit 2
fi
fs=$(df -PT "$scratch" | awk 'NR == 2 { print $2 " on " $1 }')
log "scratch directory $scratch ($fs)"

# ---- memkv-bench against memkv-server --store file -------------------------------------------
run_memkv() { # $1: run number; writes $RESULTS_DIR/memkv-$1-SIZE.json; non-zero on failure
    local srv_pid endpoint status=0 s keys
    rm -f "$scratch/store"
    if [[ $LAYOUT == 1 ]]; then
        # Written zeros, as fio lays out its file before its jobs: both then overwrite written
        # blocks. (A fresh store file is fallocate'd: ext4 converts its unwritten extents as
        # the first pass writes them, which is slower.)
        local blocks=$(((capacity_bytes + (64 << 20) - 1) >> 26)) # of 64 MiB
        if ! dd if=/dev/zero of="$scratch/store" bs=64M count="$blocks" oflag=direct \
            status=none; then
            log "laying out $scratch/store failed (LAYOUT=0 skips it)"
            return 1
        fi
    fi
    if ! start_memkv_server "$server" "$RESULTS_DIR/server-$1.port" "$RESULTS_DIR/server-$1.log" \
        --shards "$SHARDS" --store file --path "$scratch/store" --capacity "$CAPACITY" \
        "${server_args[@]}"; then
        log "memkv-server did not start (see $RESULTS_DIR/server-$1.log)"
        return 1
    fi
    srv_pid=$server_pid
    endpoint=$server_endpoint
    for s in "${sizes[@]}"; do
        keys=$((ws_bytes / $(to_bytes "$s")))
        ((keys >= THREADS * INFLIGHT)) || keys=$((THREADS * INFLIGHT))
        log "run $1/$RUNS: memkv-bench --sizes $s --key-space $keys" \
            "--threads $THREADS --inflight $INFLIGHT"
        "$bench" --servers "$endpoint" --sizes "$s" --ops write,read --threads "$THREADS" \
            --inflight "$INFLIGHT" --duration-ms "$((SECONDS_PER_CELL * 1000))" \
            --key-space "$keys" --json "$RESULTS_DIR/memkv-$1-$s.json" "${BENCH_ARGS[@]}" \
            >"$RESULTS_DIR/memkv-$1-$s.txt" 2> >(tee -a "$RESULTS_DIR/memkv-$1.log" >&2) ||
            status=$?
    done
    stop_memkv_server "$srv_pid" || true
    rm -f "$scratch/store"
    return "$status"
}

# ---- fio on the same filesystem ---------------------------------------------------------------
fio_file="$scratch/fio.dat"
slice=$((ws_bytes / THREADS / (16 << 20) * (16 << 20))) # per job, a multiple of 16 MiB
if ((slice < 16 << 20)); then
    log "WORKING_SET $WORKING_SET is too small for $THREADS jobs (at least 16 MiB each)"
    exit 2
fi
if ((capacity_bytes < 2 * ws_bytes)); then
    log "CAPACITY $CAPACITY must be at least 2 x WORKING_SET ($WORKING_SET): reads would miss"
    exit 2
fi
run_fio() { # $1: run number; writes $RESULTS_DIR/fio-$1-SIZE-OP.json; non-zero on failure
    local s op out status=0
    for s in "${sizes[@]}"; do
        for op in write read; do
            out="$RESULTS_DIR/fio-$1-$s-$op.json"
            log "run $1/$RUNS: fio rw=$op bs=$s numjobs=$THREADS iodepth=$INFLIGHT"
            if ! fio --name="memkv-vs-fio-$op" --filename="$fio_file" --direct=1 \
                --ioengine=io_uring --rw="$op" --bs="$s" --numjobs="$THREADS" \
                --iodepth="$INFLIGHT" --size="$slice" --offset_increment="$slice" \
                --time_based --runtime="$SECONDS_PER_CELL" --group_reporting \
                --output-format=json --output="$out" 2>>"$RESULTS_DIR/fio-$1.log"; then
                log "run $1/$RUNS: fio rw=$op bs=$s failed (see $RESULTS_DIR/fio-$1.log)"
                status=1
            fi
        done
    done
    return "$status"
}

# fio's file, written once (reads of never-written blocks would not touch the device).
log "laying out $WORKING_SET for fio"
fio --name=layout --filename="$fio_file" --size="$((slice * THREADS))" --rw=write --bs=1M \
    --direct=1 --ioengine=io_uring --iodepth=4 --output="$RESULTS_DIR/fio-layout.txt"

failed=0
for run in $(seq 1 "$RUNS"); do
    order=(memkv fio)
    ((run % 2 == 0)) && order=(fio memkv)
    for what in "${order[@]}"; do
        if [[ $what == memkv ]]; then
            log "run $run/$RUNS: memkv-bench, sizes $SIZES, $THREADS x $INFLIGHT in flight"
            if ! run_memkv "$run"; then
                log "run $run/$RUNS: memkv-bench failed or reported errors" \
                    "(see $RESULTS_DIR/memkv-$run-*.txt)"
                failed=1
            fi
        elif ! run_fio "$run"; then
            failed=1
        fi
    done
done

# ---- report --------------------------------------------------------------------------------------
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
echo
echo "Machine: $(nproc) CPUs ($cpu), Linux $(uname -r); memkv's client and server share them."
echo "Filesystem: $fs ($(findmnt -no OPTIONS -T "$scratch" 2>/dev/null || echo '?'))."
echo "memkv: memkv-bench over 127.0.0.1 against memkv-server --store file ($SHARDS shards," \
    "$CAPACITY file$([[ $LAYOUT == 1 ]] && echo ', laid out with zeros first')${SERVER_ARGS:+, $SERVER_ARGS})," \
    "$THREADS threads x $INFLIGHT in flight;" \
    "$(fio --version):" \
    "--direct=1 --ioengine=io_uring, numjobs=$THREADS x iodepth=$INFLIGHT;" \
    "${SECONDS_PER_CELL} s per cell; both over $WORKING_SET of data per block size."
if [[ -s "$RESULTS_DIR/server-1.log" ]]; then
    echo "memkv-server: $(grep -m1 -o 'buffers: .*' "$RESULTS_DIR/server-1.log" ||
        echo 'buffers: ?'); $(grep -m1 -o 'I/O: .*' "$RESULTS_DIR/server-1.log" ||
        echo 'I/O: ?')"
fi
echo "Medians of $RUNS runs (memkv and fio alternating which goes first)."
python3 - "$RESULTS_DIR" "$RUNS" "$SIZES" <<'EOF'
import json, os, re, statistics, sys

results, runs, sizes = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")

def to_bytes(s):
    m = re.fullmatch(r"(\d+)([KMGT]?)(i?B)?", s.strip(), re.I)
    return int(m.group(1)) << (10 * " KMGT".index((m.group(2) or " ").upper()))

def label(n):
    if n % 2**20 == 0: return f"{n >> 20} MiB"
    if n % 2**10 == 0: return f"{n >> 10} KiB"
    return f"{n} B"

memkv, fio, errors, direct = {}, {}, {}, set()
for r in range(1, runs + 1):
    for s in sizes:
        path = os.path.join(results, f"memkv-{r}-{s}.json")
        if os.path.exists(path):
            d = json.load(open(path))
            direct.add(d.get("direct_io"))
            for c in d["cells"]:
                k = (c["size"], c["op"])
                memkv.setdefault(k, []).append(c["gib_per_s"])
                errors[k] = errors.get(k, 0) + c["errors"] + c["misses"] + c["verify_failures"]
        for op in ("write", "read"):
            path = os.path.join(results, f"fio-{r}-{s}-{op}.json")
            try:
                j = json.load(open(path))
            except (OSError, ValueError):
                continue
            bw = j["jobs"][0][op]["bw_bytes"]
            fio.setdefault((to_bytes(s), op), []).append(bw / 2**30)

def med(v): return statistics.median(v) if v else None
def f2(x): return "-" if x is None else f"{x:.2f}"
odirect = {True: "yes", False: "NO (buffered fallback)", None: "unknown"}
print("| block | op | memkv GiB/s | fio GiB/s | memkv / fio | >= 85% | memkv O_DIRECT | errors |")
print("|---|---|---|---|---|---|---|---|")
dio = (odirect.get(next(iter(direct)), "?") if len(direct) == 1
       else "mixed" if direct else "unknown")
for s in sizes:
    n = to_bytes(s)
    for op in ("write", "read"):
        m, f = med(memkv.get((n, op), [])), med(fio.get((n, op), []))
        ratio = m / f if m is not None and f else None
        ok = "-" if ratio is None else ("yes" if ratio >= 0.85 else "no")
        print(f"| {label(n)} | {op} | {f2(m)} | {f2(f)} | "
              f"{'-' if ratio is None else f'{ratio:.0%}'} | {ok} | {dio} | "
              f"{errors.get((n, op), '-')} |")
print()
print("Per run (GiB/s, memkv / fio):")
for s in sizes:
    n = to_bytes(s)
    for op in ("write", "read"):
        m = ", ".join(f"{x:.2f}" for x in memkv.get((n, op), [])) or "-"
        f = ", ".join(f"{x:.2f}" for x in fio.get((n, op), [])) or "-"
        print(f"  {label(n):>7} {op:5}: memkv {m}  /  fio {f}")
EOF
echo
echo "Per-run JSON and logs: $RESULTS_DIR"
exit "$failed"
