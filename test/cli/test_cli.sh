#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# memkv-server's and memkv-cli's command lines, run for real:
#  - memkv-server: --help, bad values refused with exit 2 and a clear message, and --trim /
#    MEMKV_TRIM / the config file's `trim` reaching the server (its start-up banner states the
#    TRIM in use), each server stopped cleanly with SIGTERM;
#  - memkv-cli stats against two servers, one of them killed: the live one's counters, serverI.up
#    for both, exit status 3.
# Usage: test_cli.sh PATH/TO/memkv-server PATH/TO/memkv-cli. Exit 77 (skipped) where io_uring is
# unavailable.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 PATH/TO/memkv-server PATH/TO/memkv-cli" >&2
    exit 2
fi
server_bin=$(realpath "$1")
cli_bin=$(realpath "$2")
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/server-lib.sh
source "$here/../../scripts/server-lib.sh"
tmp=$(mktemp -d "${MEMKV_TEST_DIR:-/var/tmp}/memkv-cli-test.XXXXXX")
pids=()
cleanup() {
    stop_pids
    rm -rf "$tmp"
}
trap cleanup EXIT

failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

split_env() { # sets envs and args from "NAME=VALUE... -- ARGS..."
    envs=()
    while [[ $1 != -- ]]; do
        envs+=("$1")
        shift
    done
    shift
    args=("$@")
}

# expect_status WHAT STATUS COMMAND...: COMMAND must exit with STATUS.
expect_status() {
    local what=$1 want=$2 rc=0
    shift 2
    "$@" >"$tmp/out" 2>&1 || rc=$?
    if [[ $rc -ne $want ]]; then
        fail "$what: exit status $rc, expected $want: $(cat "$tmp/out")"
    else
        echo "ok: $what: exit $rc, $(cat "$tmp/out")"
    fi
}

# expect_usage_error WHAT MESSAGE [NAME=VALUE...] -- FLAGS...: memkv-server, with those
# environment variables, must exit 2 and print MESSAGE.
expect_usage_error() {
    local what=$1 message=$2 rc=0
    shift 2
    split_env "$@"
    # A server that accepted the values would listen: it is stopped after 10 s (status 124).
    env "${envs[@]}" timeout 10 "$server_bin" "${args[@]}" >"$tmp/out" 2>&1 || rc=$?
    if [[ $rc -ne 2 ]]; then
        fail "$what: exit status $rc, expected 2"
    elif ! grep -qF -- "$message" "$tmp/out"; then
        fail "$what: no '$message' in: $(cat "$tmp/out")"
    else
        echo "ok: $what refused: $(head -n1 "$tmp/out")"
    fi
}

# expect_trim WHAT EXPECTED [NAME=VALUE...] -- FLAGS...: a file-store server started with those
# environment variables and FLAGS must announce "TRIM on eviction EXPECTED" and stop cleanly.
n=0
expect_trim() {
    local what=$1 expected=$2 banner status=0 e
    shift 2
    split_env "$@"
    n=$((n + 1))
    for e in "${envs[@]}"; do export "${e?}"; done
    if start_memkv_server "$server_bin" "$tmp/port" "$tmp/log-$n" --shards 1 --store file \
        --path "$tmp/store-$n" --capacity 64M --max-value 1M "${args[@]}"; then
        banner=$(grep -o 'TRIM on eviction .*' "$tmp/log-$n" || true)
        stop_memkv_server "$server_pid" || status=$?
    else
        if grep -q "io_uring setup failed" "$tmp/log-$n"; then
            echo "io_uring is unavailable here: skipped"
            exit 77
        fi
        status=-1
    fi
    for e in "${envs[@]}"; do unset "${e%%=*}"; done
    if [[ $status -ne 0 ]]; then
        fail "$what: the server did not start and stop cleanly (status $status):" \
            "$(cat "$tmp/log-$n")"
    elif [[ $banner != "TRIM on eviction $expected" ]]; then
        fail "$what: banner '$banner', expected 'TRIM on eviction $expected'"
    else
        echo "ok: $what: $banner"
    fi
}

# --help documents --trim and exits 0.
if help=$("$server_bin" --help) && grep -q -- '--trim MODE' <<<"$help"; then
    echo "ok: --help lists --trim"
else
    fail "--help did not exit 0 or does not list --trim"
fi

expect_usage_error "--trim maybe" "unknown TRIM mode 'maybe'" -- --trim maybe
expect_usage_error "MEMKV_TRIM=yes" "unknown TRIM mode 'yes'" MEMKV_TRIM=yes -- --store memory
expect_usage_error "--capacity 12Q" "--capacity" -- --capacity 12Q

default="no (the store's default; --trim on|off)"
expect_trim "a file store by default" "$default" --
expect_trim "--trim auto" "$default" -- --trim auto
expect_trim "--trim on" "yes" -- --trim on
expect_trim "MEMKV_TRIM=on" "yes" MEMKV_TRIM=on --
expect_trim "--trim off over MEMKV_TRIM=on" "no" MEMKV_TRIM=on -- --trim off
printf 'trim: on\n' >"$tmp/memkv.yaml"
expect_trim "'trim: on' in a config file" "yes" -- --config "$tmp/memkv.yaml"

# memkv-cli stats and ping with one of two (memory-store) servers killed.
endpoints=()
for name in a b; do
    if ! start_memkv_server "$server_bin" "$tmp/port-$name" "$tmp/log-$name" --shards 2; then
        fail "server $name did not start: $(cat "$tmp/log-$name")"
        exit 1
    fi
    endpoints+=("$server_endpoint")
done
endpoint_a=${endpoints[0]} endpoint_b=${endpoints[1]}
kill -KILL "$server_pid" # b
stop_memkv_server "$server_pid" || true # reaps it
rc=0
"$cli_bin" --servers "$endpoint_a,$endpoint_b" stats >"$tmp/stats" 2>"$tmp/stats.err" || rc=$?
if [[ $rc -ne 3 ]]; then
    fail "memkv-cli stats with server 1 dead: exit status $rc, expected 3"
elif ! grep -qx 'server0.up 1' "$tmp/stats" || ! grep -qx 'server1.up 0' "$tmp/stats" ||
    ! grep -q '^server0.shard1.puts ' "$tmp/stats" || grep -q '^server1.shard' "$tmp/stats" ||
    ! grep -qF "server 1 ($endpoint_b) did not answer" "$tmp/stats.err"; then
    fail "memkv-cli stats with server 1 dead: $(cat "$tmp/stats" "$tmp/stats.err")"
else
    echo "ok: memkv-cli stats with server 1 dead: exit 3, $(cat "$tmp/stats.err")"
fi
expect_status "memkv-cli ping with server 1 dead" 3 \
    "$cli_bin" --servers "$endpoint_a,$endpoint_b" ping
expect_status "memkv-cli ping with its one server up" 0 "$cli_bin" --servers "$endpoint_a" ping

if ((failures > 0)); then
    echo "$failures check(s) failed" >&2
    exit 1
fi
echo "all checks passed"
