# shellcheck shell=bash
# SPDX-License-Identifier: Apache-2.0
# Starting and stopping memkv-server processes; sourced (not run) by the demo, the bench scripts
# and the command-line test. The caller owns a `pids` array (for its EXIT trap's stop_pids).

# Configures and builds BUILD_DIR (Release) with memkv-bench and memkv-server, JOBS compile jobs;
# sets bench and server to the two binaries. (bench-vs-iperf.sh builds its own: it can do
# without memkv-server.)
# Usage: build_bench_tools BUILD_DIR JOBS
# shellcheck disable=SC2034 # bench and server are the caller's
build_bench_tools() {
    cmake -S . -B "$1" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$1" -j "$2" --target memkv-bench memkv-server
    bench="$1/examples/memkv-bench"
    server="$1/examples/memkv-server"
}

# Starts memkv-server in the background listening on 127.0.0.1 (a free port), with the flags
# given after the first three arguments, its stdout and stderr to a log file, and waits up to
# 30 s for the endpoint it writes to its port file. Sets server_pid (also added to `pids`) and
# server_endpoint ("127.0.0.1:PORT").
# Returns 1, the server killed and reaped, when it exits first or is not ready in time; the
# caller reports it (the log file tells why).
# Usage: start_memkv_server BINARY PORT_FILE LOG_FILE [memkv-server flags...]
start_memkv_server() {
    local bin=$1 port_file=$2 log_file=$3 _
    shift 3
    rm -f "$port_file"
    server_endpoint=""
    "$bin" --listen 127.0.0.1:0 --port-file "$port_file" "$@" >"$log_file" 2>&1 &
    server_pid=$!
    pids+=("$server_pid")
    for _ in $(seq 1 300); do
        if [[ -s "$port_file" ]]; then # written atomically
            server_endpoint=$(head -n1 "$port_file")
            [[ $server_endpoint =~ ^[^:]+:[0-9]+$ ]] && return 0
        fi
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    stop_memkv_server "$server_pid" || true
    server_endpoint=""
    return 1
}

# Stops server $1: SIGCONT (in case it was stopped) and SIGTERM (a clean shutdown), then
# SIGKILL if it has not exited within 10 s. Removes it from `pids` and returns its exit status
# (137 when it had to be killed).
stop_memkv_server() {
    local pid=$1 status=0 _
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || status=$?
    local kept=() p
    for p in "${pids[@]}"; do
        [[ $p == "$pid" ]] || kept+=("$p")
    done
    pids=("${kept[@]}")
    return "$status"
}

# Stops every process whose pid is in the caller's `pids` array, as stop_memkv_server does; for
# EXIT traps.
stop_pids() {
    local pid
    for pid in "${pids[@]}"; do
        stop_memkv_server "$pid" || true
    done
}
