#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# bench-recovery-server.sh: how long a real memkv-server takes to come back with ENTRIES small
# entries in its file store, after kill -9 and after a clean shutdown (issue 4).
#
# Builds build/release (Release; memkv-server, memkv-bench), starts memkv-server --store file
# (SHARDS shards) on a fresh store file, writes ENTRIES distinct keys of SIZE bytes with
# memkv-bench (each key exactly once), then:
#   1. kill -9 the server and start it again on the same file;
#   2. stop it with SIGTERM (a clean shutdown) and start it again;
# and prints, for each start, the entries it recovered and the time it took, as the server logs
# them ("recovered N entries ... in S s"), with the server process's peak RSS.
# bench/bench_recovery measures one shard's engine alone; this is the whole server.
#
# Usage: scripts/bench-recovery-server.sh
#   e.g. ENTRIES=200000 scripts/bench-recovery-server.sh
# Environment: BUILD_DIR (build/release), DATA_DIR (BUILD_DIR: a scratch directory is created
#   there and removed at exit), ENTRIES (1000000), SIZE (4K, at most 64M), SHARDS (2), CAPACITY
#   (default: room for every entry with its 4 KiB header block, and four spare 128 MiB regions
#   per shard), BUILD_JOBS
#   (nproc), RESULTS_DIR (BUILD_DIR/bench-recovery-server: the logs kept there).
# Run time: the fill (about 30-40 s per million 4 KiB entries here) plus the starts.
# Exit status: 0 when both restarts recovered every entry, 1 otherwise, 2 on bad settings.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD_DIR=${BUILD_DIR:-build/release}
DATA_DIR=${DATA_DIR:-$BUILD_DIR}
ENTRIES=${ENTRIES:-1000000}
SIZE=${SIZE:-4K}
SHARDS=${SHARDS:-2}
BUILD_JOBS=${BUILD_JOBS:-$(nproc)}
RESULTS_DIR=${RESULTS_DIR:-$BUILD_DIR/bench-recovery-server}

log() { echo "bench-recovery-server: $*" >&2; }

for n in ENTRIES SHARDS BUILD_JOBS; do
    if ! [[ ${!n} =~ ^[1-9][0-9]*$ ]]; then
        log "$n must be a positive integer (got '${!n}')"
        exit 2
    fi
done
if ((ENTRIES > 16777216)); then
    log "ENTRIES must be at most 16777216 (memkv-bench's --key-space)"
    exit 2
fi
if ! [[ $SIZE =~ ^([1-9][0-9]*)([KM]?)$ ]]; then
    log "SIZE must be a number of bytes with an optional K or M (got '$SIZE')"
    exit 2
fi
size_bytes=${BASH_REMATCH[1]}
case ${BASH_REMATCH[2]} in
K) size_bytes=$((size_bytes << 10)) ;;
M) size_bytes=$((size_bytes << 20)) ;;
esac
# The server's default regions (128 MiB: 2 x the 64 MiB value cap); each record takes a 4 KiB
# header block and its value rounded up to 4 KiB.
region=$((128 << 20))
record=$((4096 + (size_bytes + 4095) / 4096 * 4096))
if ((size_bytes > (64 << 20))); then
    log "SIZE must be at most 64M (the server's value cap)"
    exit 2
fi
default_capacity=$((ENTRIES * record + SHARDS * 4 * region + (64 << 20)))
CAPACITY=${CAPACITY:-$default_capacity}

# shellcheck source=scripts/server-lib.sh
source "scripts/server-lib.sh"
pids=()
scratch=""
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    stop_pids
    [[ -n "$scratch" ]] && rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building $BUILD_DIR (Release)"
build_bench_tools "$BUILD_DIR" "$BUILD_JOBS"
rm -rf "$RESULTS_DIR"
mkdir -p "$RESULTS_DIR" "$DATA_DIR"
RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)
scratch=$(mktemp -d "$(cd "$DATA_DIR" && pwd)/memkv-bench-recovery.XXXXXX")
store="$scratch/store"
server_args=(--shards "$SHARDS" --store file --path "$store" --capacity "$CAPACITY")

# start NAME: starts the server on the store, its log in RESULTS_DIR/NAME.log.
start() {
    if ! start_memkv_server "$server" "$RESULTS_DIR/$1.port" "$RESULTS_DIR/$1.log" \
        "${server_args[@]}"; then
        log "memkv-server did not start ($1; see $RESULTS_DIR/$1.log)"
        exit 1
    fi
}

# recovered NAME: "ENTRIES SECONDS" from the server log's recovery line.
recovered() {
    sed -n 's/.*recovered \([0-9]*\) entries .* in \([0-9.]*\) s$/\1 \2/p' "$RESULTS_DIR/$1.log" |
        head -n1
}

# peak_rss_mib PID: the process's peak resident set (VmHWM) in MiB.
peak_rss_mib() {
    awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"
}

log "store $store: $((CAPACITY >> 20)) MiB on $(df -PT "$scratch" | awk 'NR == 2 { print $2 }')"
start fill
log "writing $ENTRIES keys of $SIZE (each once)"
"$bench" --servers "$server_endpoint" --sizes "$SIZE" --ops write --key-space "$ENTRIES" \
    --bytes "$((ENTRIES * size_bytes))" --duration-ms 3600000 --threads 2 --inflight 16 \
    --json "$RESULTS_DIR/fill.json" >"$RESULTS_DIR/fill.txt" 2> >(tee "$RESULTS_DIR/fill.err" >&2)

log "kill -9 (pid $server_pid)"
kill -KILL "$server_pid"
stop_memkv_server "$server_pid" || true # reaps it
start after-kill
read -r kill_entries kill_seconds <<<"$(recovered after-kill)"
kill_rss=$(peak_rss_mib "$server_pid")

log "SIGTERM (a clean shutdown)"
stop_memkv_server "$server_pid" || log "the clean shutdown exited with status $?"
start after-clean
read -r clean_entries clean_seconds <<<"$(recovered after-clean)"
clean_rss=$(peak_rss_mib "$server_pid")
stop_memkv_server "$server_pid" || true

printf '\nmemkv-server, %s shards, file store on %s, %s entries of %s written once each.\n' \
    "$SHARDS" "$(df -PT "$scratch" | awk 'NR == 2 { print $2 }')" "$ENTRIES" "$SIZE"
printf '| start | entries recovered | recovery s | s per million entries | peak RSS MiB |\n'
printf '|---|---|---|---|---|\n'
for row in "after kill -9:$kill_entries:$kill_seconds:$kill_rss" \
    "after a clean shutdown:$clean_entries:$clean_seconds:$clean_rss"; do
    IFS=: read -r what n s rss <<<"$row"
    awk -v what="$what" -v n="${n:-0}" -v s="${s:-0}" -v rss="$rss" 'BEGIN {
        printf "| %s | %d | %.3f | %.2f | %s |\n", what, n, s, n ? s * 1e6 / n : 0, rss }'
done
printf '\nLogs: %s\n' "$RESULTS_DIR"
if [[ ${kill_entries:-0} -lt $ENTRIES || ${clean_entries:-0} -lt $ENTRIES ]]; then
    log "a restart recovered fewer than $ENTRIES entries"
    exit 1
fi
