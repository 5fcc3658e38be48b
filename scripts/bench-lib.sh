# shellcheck shell=bash
# SPDX-License-Identifier: Apache-2.0
# Shared by the bench-*.sh scripts (sourced, not run).

# Stops and reaps every process whose pid is in the caller's `pids` array (the servers a bench
# script started); for the scripts' EXIT traps.
# shellcheck disable=SC2154 # pids belongs to the sourcing script
stop_pids() {
    local pid
    for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
}
