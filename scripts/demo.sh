#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# memkv end to end: builds memkv-server and memkv-cli (build/release), starts a 2-shard server on
# 127.0.0.1 with a random auth key, stores and loads real files of 4 KiB to 16 MiB and checks their
# SHA-256, then shows exists, del, a miss and the server's stats, and stops the server with SIGTERM.
# Exits non-zero on any mismatch or failed operation.
set -euo pipefail

cd "$(dirname "$0")/.."
jobs=${MEMKV_JOBS:-$(nproc)}
build=build/release
server_bin=$build/examples/memkv-server
cli_bin=$build/examples/memkv-cli

banner() { printf '\n==== %s ====\n' "$*"; }
now_ns() { date +%s%N; }
ms_since() { awk -v a="$1" -v b="$(now_ns)" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }

banner "dependencies"
scripts/install-deps.sh

banner "build $build (memkv-server, memkv-cli)"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$build" -j "$jobs" --target memkv-server memkv-cli

# shellcheck source=scripts/server-lib.sh
source scripts/server-lib.sh
tmp=$(mktemp -d "${TMPDIR:-/tmp}/memkv-demo.XXXXXX")
pids=()
cleanup() {
  stop_pids
  rm -rf "$tmp"
}
trap cleanup EXIT

banner "start memkv-server (file store, 2 shards, 127.0.0.1, random auth key)"
MEMKV_AUTH_KEY=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
export MEMKV_AUTH_KEY
echo "auth key: ${MEMKV_AUTH_KEY:0:8}... (32 random bytes, hex; shared by server and client)"

# Starts memkv-server (2 shards) with the given store flags and sets addr to where it listens.
# Returns 1 (log printed) if it exits before it is ready or is not ready in time.
start_server() {
  if start_memkv_server "$server_bin" "$tmp/port" "$tmp/server.log" --shards 2 "$@"; then
    addr=$server_endpoint
    return 0
  fi
  echo "memkv-server did not start; its log:" >&2
  cat "$tmp/server.log" >&2
  return 1
}

# File mode: a 1 GiB preallocated store file (O_DIRECT where the filesystem allows it). Only
# where io_uring itself is unavailable (some container sandboxes) is the memory store the
# fallback; any other failure of file mode fails the demo.
if ! start_server --store file --path "$tmp/memkv-store.img" --capacity 1G; then
  if ! grep -q "io_uring setup failed" "$tmp/server.log"; then
    echo "FAIL: memkv-server could not start in file mode" >&2
    exit 1
  fi
  echo "io_uring is unavailable here (above); falling back to the memory store" >&2
  start_server --store memory --capacity 1G || exit 1
fi
echo "memkv-server (pid $server_pid) listening on $addr"

cli() { "$cli_bin" --servers "$addr" "$@"; }
failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

banner "data files"
head -c 4096 /dev/urandom >"$tmp/blob-4KiB.bin"
head -c $((1024 * 1024)) /dev/urandom >"$tmp/blob-1MiB.bin"
head -c $((16 * 1024 * 1024)) /dev/urandom >"$tmp/blob-16MiB.bin"
{
  echo "memkv demo text file, written $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  for i in $(seq 1 200); do
    echo "line $i: the same key always means the same bytes; a miss is always acceptable."
  done
} >"$tmp/notes.txt"
ls -l "$tmp"/blob-*.bin "$tmp/notes.txt"

banner "put, get and compare SHA-256 (times include starting memkv-cli)"
keys=()
printf '%-14s %10s %12s %12s  %s\n' file bytes "put ms" "get ms" result
for file in "$tmp/blob-4KiB.bin" "$tmp/blob-1MiB.bin" "$tmp/blob-16MiB.bin" "$tmp/notes.txt"; do
  name=$(basename "$file")
  key="demo/$name"
  size=$(stat -c %s "$file")
  t0=$(now_ns)
  if ! cli put "$key" "$file"; then
    fail "put $key"
    continue
  fi
  put_ms=$(ms_since "$t0")
  t0=$(now_ns)
  if ! cli get "$key" -o "$tmp/$name.out"; then
    fail "get $key"
    continue
  fi
  get_ms=$(ms_since "$t0")
  want=$(sha256sum <"$file" | cut -d' ' -f1)
  got=$(sha256sum <"$tmp/$name.out" | cut -d' ' -f1)
  if [[ "$want" == "$got" ]]; then
    result=OK
  else
    result="MISMATCH (want ${want:0:16}..., got ${got:0:16}...)"
  fi
  printf '%-14s %10d %12s %12s  %s\n' "$name" "$size" "$put_ms" "$get_ms" "$result"
  [[ "$result" == OK ]] || fail "$key: bytes read back differ from the bytes stored"
  keys+=("$key")
done

banner "exists ${keys[*]}"
set +e
out=$(cli exists "${keys[@]}")
rc=$?
set -e
echo "$out"
[[ $rc -eq 0 ]] || fail "exists of stored keys exited with $rc"
for k in "${keys[@]}"; do
  grep -q "^$k present " <<<"$out" || fail "exists: $k not reported present"
done

gone="demo/blob-4KiB.bin"
banner "del $gone"
cli del "$gone" || fail "del $gone"

banner "get $gone (deleted: expect a miss, exit code 1)"
set +e
cli get "$gone" -o "$tmp/gone.out" 2>"$tmp/gone.err"
rc=$?
set -e
cat "$tmp/gone.err"
if [[ $rc -eq 1 ]] && grep -qi miss "$tmp/gone.err"; then
  echo "miss, as expected (exit code 1)"
else
  fail "get of a deleted key: exit code $rc, expected 1 and \"miss\" on stderr"
fi

banner "exists $gone (after del)"
set +e
out=$(cli exists "$gone")
rc=$?
set -e
echo "$out"
if [[ $rc -ne 1 ]] || ! grep -q "^$gone absent" <<<"$out"; then
  fail "exists of a deleted key: exit code $rc, expected 1 and \"$gone absent\""
fi

banner "stats"
cli stats || fail "stats"

banner "stop memkv-server (SIGTERM)"
server_rc=0
stop_memkv_server "$server_pid" || server_rc=$?
echo "memkv-server exited with status $server_rc"
if [[ $server_rc -ne 0 ]]; then
  fail "memkv-server did not exit cleanly on SIGTERM (status $server_rc)"
fi

echo "memkv-server log (last 10 lines):"
tail -n 10 "$tmp/server.log" | sed 's/^/  /'

banner "result"
if ((failures > 0)); then
  echo "demo FAILED: $failures problem(s)"
  exit 1
fi
echo "demo passed: every file read back byte for byte, the deleted key missed"
