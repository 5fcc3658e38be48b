#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# bench-vs-iperf.sh: memkv over loopback TCP next to what the kernel's loopback TCP can do.
#
# Builds build/release (Release; targets memkv-bench and memkv-server), then RUNS times (default
# 3) runs the pair
#   (a) iperf3 over 127.0.0.1 with as many parallel streams as memkv-bench opens connections
#       (one per server shard: 1 server x SHARDS shards), and
#   (b) memkv-bench against a freshly started memkv-server process (memory store; falls back to
#       memkv-bench's embedded server if memkv-server cannot be built or started),
# and prints the medians side by side with the ratio memkv/iperf3 per block size.
#
# Usage: scripts/bench-vs-iperf.sh [memkv-bench flags...]
#   e.g. scripts/bench-vs-iperf.sh --sizes 64K,1M --threads 2
# Environment: BUILD_DIR (build/release), RUNS (3), SHARDS (2), CAPACITY (4G),
#   IPERF_SECONDS (5), RESULTS_DIR (BUILD_DIR/bench-vs-iperf: per-run JSON and logs kept there).
# Exit status: 0 when every memkv-bench run succeeded, 1 otherwise (the table is printed anyway;
# errors are counted per cell in the latency table).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD_DIR=${BUILD_DIR:-build/release}
RUNS=${RUNS:-3}
SHARDS=${SHARDS:-2}
CAPACITY=${CAPACITY:-4G}
IPERF_SECONDS=${IPERF_SECONDS:-5}
RESULTS_DIR=${RESULTS_DIR:-$BUILD_DIR/bench-vs-iperf}
BENCH_ARGS=("$@")

for tool in cmake ninja iperf3 python3 ss; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "bench-vs-iperf: '$tool' is required (scripts/install-deps.sh, or apt-get install" \
            "iperf3)" >&2
        exit 1
    fi
done

# shellcheck source=scripts/server-lib.sh
source "scripts/server-lib.sh"
pids=()
iperf_pidfile=""
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    stop_pids
    if [[ -n "$iperf_pidfile" && -s "$iperf_pidfile" ]]; then
        kill "$(cat "$iperf_pidfile")" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "bench-vs-iperf: $*" >&2; }

# ---- build -----------------------------------------------------------------------------------
log "building $BUILD_DIR (Release)"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)" --target memkv-bench
bench="$BUILD_DIR/examples/memkv-bench"
server="$BUILD_DIR/examples/memkv-server"
use_server=1
if ! cmake --build "$BUILD_DIR" -j "$(nproc)" --target memkv-server || [[ ! -x "$server" ]]; then
    log "memkv-server could not be built: memkv-bench uses its embedded server instead"
    use_server=0
fi

rm -rf "$RESULTS_DIR"
mkdir -p "$RESULTS_DIR"
RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd) # absolute: iperf3 -D changes directory to /
streams=$SHARDS # memkv-bench: one connection per (server, shard), one server here

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until something listens on 127.0.0.1:$1 (at most ~10 s).
wait_listening() {
    local _
    for _ in $(seq 1 100); do
        if [[ -n "$(ss -Hltn "sport = :$1")" ]]; then return 0; fi
        sleep 0.1
    done
    return 1
}

# ---- iperf3 --------------------------------------------------------------------------------------
run_iperf() { # $1: run number; prints GiB/s received (sum over streams)
    local port out
    port=$(free_port)
    iperf_pidfile="$RESULTS_DIR/iperf3-$1.pid"
    iperf3 -s -D -B 127.0.0.1 -p "$port" -I "$iperf_pidfile" \
        --logfile "$RESULTS_DIR/iperf3-server-$1.log"
    if ! wait_listening "$port"; then
        log "iperf3 -s did not start"
        return 1
    fi
    out="$RESULTS_DIR/iperf3-$1.json"
    iperf3 -c 127.0.0.1 -p "$port" -P "$streams" -t "$IPERF_SECONDS" -J >"$out"
    kill "$(cat "$iperf_pidfile")" 2>/dev/null || true
    iperf_pidfile=""
    python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
print("%.4f" % (d["end"]["sum_received"]["bits_per_second"] / 8 / 2**30))' "$out"
}

# ---- memkv-bench against memkv-server ---------------------------------------------------------
run_memkv() { # $1: run number; writes $RESULTS_DIR/memkv-$1.json; returns memkv-bench's status
    local endpoint status=0
    local json="$RESULTS_DIR/memkv-$1.json" out="$RESULTS_DIR/memkv-$1.txt"
    if [[ $use_server == 1 ]]; then
        if ! start_memkv_server "$server" "$RESULTS_DIR/server-$1.port" \
            "$RESULTS_DIR/server-$1.log" --shards "$SHARDS" --capacity "$CAPACITY"; then
            log "memkv-server did not start (see $RESULTS_DIR/server-$1.log):" \
                "using memkv-bench's embedded server from now on"
            use_server=0
        else
            endpoint=$server_endpoint
            "$bench" --servers "$endpoint" --json "$json" "${BENCH_ARGS[@]}" >"$out" \
                2> >(tee "$RESULTS_DIR/memkv-$1.log" >&2) || status=$?
            stop_memkv_server "$server_pid" || true
            return "$status"
        fi
    fi
    "$bench" --shards "$SHARDS" --capacity "$CAPACITY" --json "$json" "${BENCH_ARGS[@]}" \
        >"$out" 2> >(tee "$RESULTS_DIR/memkv-$1.log" >&2) || status=$?
    return "$status"
}

failed=0
iperf_results=()
for run in $(seq 1 "$RUNS"); do
    log "run $run/$RUNS: iperf3 -P $streams -t $IPERF_SECONDS over 127.0.0.1"
    gib=$(run_iperf "$run")
    iperf_results+=("$gib")
    log "run $run/$RUNS: iperf3 $gib GiB/s"
    log "run $run/$RUNS: memkv-bench ${BENCH_ARGS[*]}"
    if ! run_memkv "$run"; then
        log "run $run/$RUNS: memkv-bench reported errors (see $RESULTS_DIR/memkv-$run.txt)"
        failed=1
    fi
done

# ---- report --------------------------------------------------------------------------------------
where="memkv-server process ($SHARDS shards, $CAPACITY memory store)"
[[ $use_server == 1 ]] || where="memkv-bench's embedded server ($SHARDS shards; memkv-server unavailable)"
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
echo
echo "Machine: $(nproc) CPUs ($cpu), Linux $(uname -r); client and server share them."
echo "memkv: memkv-bench against a $where; iperf3: -P $streams over 127.0.0.1."
if [[ -s "$RESULTS_DIR/server-1.log" ]]; then
    echo "memkv-server: $(grep -m1 -o 'buffers: .*' "$RESULTS_DIR/server-1.log" || echo 'buffers: ?')"
fi
echo "Medians of $RUNS runs (each run: iperf3 then memkv-bench)."
python3 - "$RESULTS_DIR" "$RUNS" "$streams" "${iperf_results[@]}" <<'EOF'
import json, os, statistics, sys

results, runs, streams = sys.argv[1], int(sys.argv[2]), sys.argv[3]
iperf = [float(x) for x in sys.argv[4:]]
cells = {}  # (size, op) -> list of cells
header = None
for r in range(1, runs + 1):
    path = os.path.join(results, f"memkv-{r}.json")
    if not os.path.exists(path):
        continue
    d = json.load(open(path))
    header = d
    for c in d["cells"]:
        cells.setdefault((c["size"], c["op"]), []).append(c)

def label(n):
    if n % 2**20 == 0: return f"{n >> 20} MiB"
    if n % 2**10 == 0: return f"{n >> 10} KiB"
    return f"{n} B"

def med(key, field, sub=None):
    v = cells.get(key, [])
    if not v: return None
    return statistics.median(c[field][sub] if sub else c[field] for c in v)

def f2(x): return "-" if x is None else f"{x:.2f}"

ip = statistics.median(iperf)
if header:
    print(f"memkv-bench: {header['threads']} threads x {header['inflight_per_thread']} in flight, "
          f"{header['connections']} TCP connections, {header['shards']} shards; "
          f"iperf3 runs (GiB/s): {', '.join(f'{x:.2f}' for x in iperf)}")
print()
print(f"| block | memkv write GiB/s | memkv read GiB/s | iperf3 -P {streams} GiB/s "
      "| write / iperf3 | read / iperf3 |")
print("|---|---|---|---|---|---|")
for size in sorted({k[0] for k in cells}):
    w, r = med((size, "write"), "gib_per_s"), med((size, "read"), "gib_per_s")
    ratio = lambda x: "-" if x is None or ip <= 0 else f"{x / ip:.0%}"
    print(f"| {label(size)} | {f2(w)} | {f2(r)} | {ip:.2f} | {ratio(w)} | {ratio(r)} |")
print()
print("Latency, medians over the runs (us, submission to completion), and errors summed:")
print()
print("| block | op | ops/s | p50 | p99 | p99.9 | max | errors |")
print("|---|---|---|---|---|---|---|---|")
for (size, op) in sorted(cells, key=lambda k: (k[0], k[1] != "write")):
    v = cells[(size, op)]
    errs = sum(c["errors"] + c["misses"] + c["verify_failures"] for c in v)
    lat = [med((size, op), "latency_us", q) for q in ("p50", "p99", "p999", "max")]
    print(f"| {label(size)} | {op} | {med((size, op), 'ops_per_s'):.0f} | "
          + " | ".join(f"{x:.0f}" for x in lat) + f" | {errs} |")
print()
print("Per run (GiB/s write/read):")
for (size, op) in sorted(cells, key=lambda k: (k[0], k[1] != "write")):
    print(f"  {label(size):>7} {op:5}: " + ", ".join(f"{c['gib_per_s']:.2f}" for c in cells[(size, op)]))
EOF
echo
echo "Per-run JSON and logs: $RESULTS_DIR"
exit "$failed"
