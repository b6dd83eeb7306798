#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test of the workspace, then
# the fault tests on a docker-compose cluster (tessera-jepsen smoke).
# Tests use real files, real sockets on 127.0.0.1, (for the disk-full test)
# a small tmpfs, and docker and nsenter for the fault tests, so run as root.
# Ends with one summary line over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace 2>&1 | tee "$log" || status=$?
read -r passed failed < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) {
        if ($(i + 1) ~ /^passed/) p += $i
        if ($(i + 1) ~ /^failed/) f += $i
    }
} END { print p + 0, f + 0 }' "$log")
echo
echo "workspace: ${passed:-0} passed, ${failed:-0} failed"
if [ "$status" -ne 0 ] || [ "${passed:-0}" -eq 0 ]; then
    echo "test suite FAILED (cargo exit status $status)" >&2
    exit 1
fi
echo "== fault tests: tessera-jepsen smoke (image from the debug binary, compose cluster)"
# `cargo test` built both binaries (their packages have integration tests);
# a separate `cargo build` would rebuild dependencies without the tests'
# features.
harness="${CARGO_TARGET_DIR:-target}/debug/tessera-jepsen"
if [ ! -x "$harness" ] || [ ! -x "${CARGO_TARGET_DIR:-target}/debug/tessera" ]; then
    echo "the fault tests need the debug tessera and tessera-jepsen binaries that cargo test builds" >&2
    exit 1
fi
"$harness" smoke
echo "== fault tests: the local backend (the same topology as processes in network namespaces)"
"$harness" smoke --backend local --scenarios kill,partition
