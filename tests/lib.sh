# tests/lib.sh -- what every shell test script of this repository shares; source it with a name:
#   . "$ROOT/tests/lib.sh" NAME
# gives: $TMP (a fresh temp dir, removed at exit), PIDS (background processes killed and reaped
# at exit), pass/fail (counted, printed "ok    …" / "FAIL  …" with indented detail), free_port,
# and summary (prints "N passed, N failed"; its status is the script's verdict).

TMP="$(mktemp -d "${TMPDIR:-/tmp}/ferrocast-$1.XXXXXX")"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    rm -rf "$TMP"
}
trap cleanup EXIT

PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "ok    $1"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL  $1"; [[ -n "${2:-}" ]] && sed 's/^/      /' <<<"$2"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

summary() {
    echo
    echo "$PASSED passed, $FAILED failed"
    [[ $FAILED -eq 0 ]]
}
