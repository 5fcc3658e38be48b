#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# bench-ab.sh: memkv before and after a change, side by side in one run.
#
# Builds memkv-bench and memkv-server (Release) twice: A from git revision BASE (in a temporary
# worktree under BUILD_ROOT) and B from the working tree. Then ROUNDS times, for each store
# kind, runs A and B in turn (the order alternating every round, so that drift in the machine's
# load favours neither): a fresh memkv-server of that build (fresh store file for the file
# store) and that build's memkv-bench against it (write then read of each size). Prints the
# medians per cell, the ratio B/A, and every round's numbers.
#
# Usage: scripts/bench-ab.sh BASE [memkv-bench flags...]
#   e.g. ROUNDS=5 scripts/bench-ab.sh 67fe3d8
# Environment: ROUNDS (5), STORES ("memory file"), SIZES (64K,1M,16M), CELL_SECONDS (3 per
#   cell), THREADS (4), INFLIGHT (16), SHARDS (2), CAPACITY (2G), BUILD_ROOT (build/bench-ab),
#   DATA_DIR (BUILD_ROOT: store files go there), BUILD_JOBS (nproc), A_BUILD (a build directory
#   of BASE that already holds examples/memkv-bench and examples/memkv-server: A is not built).
# Default run time: 5 rounds x 2 stores x 2 builds x 6 cells x 3 s plus start-up: about 8
# minutes, after the two builds.
# Exit status: 0 when every run succeeded, 1 otherwise (the table is printed anyway), 2 on bad
# settings.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BASE=${1:-}
shift || true
ROUNDS=${ROUNDS:-5}
STORES=${STORES:-memory file}
SIZES=${SIZES:-64K,1M,16M}
SECONDS_PER_CELL=${CELL_SECONDS:-3}
THREADS=${THREADS:-4}
INFLIGHT=${INFLIGHT:-16}
SHARDS=${SHARDS:-2}
CAPACITY=${CAPACITY:-2G}
BUILD_ROOT=${BUILD_ROOT:-build/bench-ab}
DATA_DIR=${DATA_DIR:-$BUILD_ROOT}
BUILD_JOBS=${BUILD_JOBS:-$(nproc)}
BENCH_ARGS=("$@")

log() { echo "bench-ab: $*" >&2; }

if [[ -z $BASE ]] || ! git rev-parse --verify --quiet "$BASE^{commit}" >/dev/null; then
    log "usage: scripts/bench-ab.sh BASE [memkv-bench flags...] (BASE: a git revision)"
    exit 2
fi
for n in ROUNDS SECONDS_PER_CELL THREADS INFLIGHT SHARDS BUILD_JOBS; do
    if ! [[ ${!n} =~ ^[1-9][0-9]*$ ]]; then
        log "$n must be a positive integer (got '${!n}')"
        exit 2
    fi
done
read -r -a stores <<<"$STORES"
for s in "${stores[@]}"; do
    if [[ $s != memory && $s != file ]]; then
        log "STORES may name 'memory' and 'file' (got '$s')"
        exit 2
    fi
done

# shellcheck source=scripts/server-lib.sh
source "scripts/server-lib.sh"
pids=()
scratch=""
worktree=""
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    stop_pids
    if [[ -n "$scratch" && -d "$scratch" ]]; then rm -rf "$scratch"; fi
    if [[ -n "$worktree" ]]; then git worktree remove --force "$worktree" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$BUILD_ROOT"
BUILD_ROOT=$(cd "$BUILD_ROOT" && pwd)
results="$BUILD_ROOT/results"
rm -rf "$results"
mkdir -p "$results" "$DATA_DIR"
scratch=$(mktemp -d "$(cd "$DATA_DIR" && pwd)/memkv-bench-ab.XXXXXX")

# ---- build -----------------------------------------------------------------------------------
if [[ -n ${A_BUILD:-} ]]; then
    a_dir=$(cd "$A_BUILD" && pwd)
    log "A: $a_dir (not rebuilt)"
else
    worktree="$BUILD_ROOT/base-src"
    git worktree remove --force "$worktree" >/dev/null 2>&1 || rm -rf "$worktree"
    git worktree add --detach "$worktree" "$BASE" >/dev/null
    a_dir="$BUILD_ROOT/a"
    log "building A ($(git rev-parse --short "$BASE")) in $a_dir"
    (cd "$worktree" && build_bench_tools "$a_dir" "$BUILD_JOBS")
fi
log "building B (the working tree) in $BUILD_ROOT/b"
build_bench_tools "$BUILD_ROOT/b" "$BUILD_JOBS"

# One run: build $1 (a or b), store $2, round $3. Non-zero on failure.
run_one() {
    local build=$1 store=$2 round=$3 tag="$2-$3-$1" status=0 dir="$BUILD_ROOT/b"
    if [[ $build == a ]]; then dir=$a_dir; fi
    local store_args=(--store memory)
    if [[ $store == file ]]; then
        rm -f "$scratch/store"
        store_args=(--store file --path "$scratch/store")
    fi
    if ! start_memkv_server "$dir/examples/memkv-server" "$results/$tag.port" \
        "$results/server-$tag.log" --shards "$SHARDS" --capacity "$CAPACITY" "${store_args[@]}"
    then
        log "memkv-server ($build) did not start (see $results/server-$tag.log)"
        return 1
    fi
    log "round $round/$ROUNDS, $store store, build $build: memkv-bench --sizes $SIZES"
    "$dir/examples/memkv-bench" --servers "$server_endpoint" --sizes "$SIZES" \
        --ops write,read --threads "$THREADS" --inflight "$INFLIGHT" \
        --duration-ms "$((SECONDS_PER_CELL * 1000))" --json "$results/$tag.json" \
        "${BENCH_ARGS[@]}" >"$results/$tag.txt" 2>"$results/$tag.log" || status=$?
    stop_pids
    rm -f "$scratch/store"
    return "$status"
}

failed=0
for round in $(seq 1 "$ROUNDS"); do
    order=(a b)
    if ((round % 2 == 0)); then order=(b a); fi
    for store in "${stores[@]}"; do
        for build in "${order[@]}"; do
            run_one "$build" "$store" "$round" || failed=1
        done
    done
done

# ---- report ------------------------------------------------------------------------------------
echo
echo "A = $(git rev-parse --short "$BASE"), B = the working tree ($(git rev-parse --short HEAD)" \
    "$(git diff --quiet HEAD && echo clean || echo "+ uncommitted changes"))."
echo "Machine: $(nproc) CPUs, Linux $(uname -r); memkv-server (2 shards, $CAPACITY) and" \
    "memkv-bench ($THREADS threads x $INFLIGHT in flight, ${SECONDS_PER_CELL} s cells) share it."
echo "Medians of $ROUNDS rounds, A and B alternating (GiB/s):"
python3 - "$results" "$ROUNDS" "${stores[@]}" <<'EOF'
import json, os, statistics, sys

results, rounds, stores = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
cells = {}
for r in range(1, rounds + 1):
    for s in stores:
        for b in ("a", "b"):
            path = os.path.join(results, f"{s}-{r}-{b}.json")
            if not os.path.exists(path):
                continue
            for c in json.load(open(path))["cells"]:
                bad = c["errors"] + c["misses"] + c["verify_failures"]
                cells.setdefault((s, c["size"], c["op"], b), []).append((c["gib_per_s"], bad))

def label(n):
    return f"{n >> 20} MiB" if n % 2**20 == 0 else f"{n >> 10} KiB"

print()
print("| store | block | op | A | B | B/A | errors A/B |")
print("|---|---|---|---|---|---|---|")
worst = None
for s in stores:
    for size in sorted({k[1] for k in cells if k[0] == s}):
        for op in ("write", "read"):
            a, b = cells.get((s, size, op, "a"), []), cells.get((s, size, op, "b"), [])
            if not a or not b:
                continue
            ma, mb = statistics.median(x for x, _ in a), statistics.median(x for x, _ in b)
            ratio = mb / ma if ma else float("nan")
            worst = ratio if worst is None else min(worst, ratio)
            print(f"| {s} | {label(size)} | {op} | {ma:.3f} | {mb:.3f} | {ratio:.2f} | "
                  f"{sum(e for _, e in a)}/{sum(e for _, e in b)} |")
if worst is not None:
    print(f"\nLowest B/A: {worst:.2f}")
print("\nPer round, A / B:")
for (s, size, op, b), v in sorted(cells.items()):
    if b == "a":
        other = cells.get((s, size, op, "b"), [])
        print(f"  {s:6} {label(size):>7} {op:5}: " + " ".join(f"{x:.3f}" for x, _ in v) +
              " / " + " ".join(f"{x:.3f}" for x, _ in other))
EOF
echo
echo "Per-run JSON and logs: $results"
exit "$failed"
