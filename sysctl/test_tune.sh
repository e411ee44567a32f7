#!/usr/bin/env bash
# test_tune.sh -- tests for sysctl/tune.sh against fake /proc and /etc trees in a temp dir.
# Never touches the real kernel or /etc. Prints "N passed, N failed"; exit 1 on any failure.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TUNE="$HERE/tune.sh"
CONF="$HERE/99-ferrocast.conf"
. "$HERE/.."/tests/lib.sh tune


# make_proc DIR KEY=VALUE...  -> a proc tree with DIR/sys/<key path> files, kernel-formatted
make_proc() {
    local dir="$1" kv key val path; shift
    for kv in "$@"; do
        key="${kv%%=*}"; val="${kv#*=}"
        path="$dir/sys/${key//.//}"
        mkdir -p "$(dirname "$path")"
        printf '%s\n' "${val// /$'\t'}" >"$path"
    done
}

# Kernel defaults of a small stock machine: everything below the recommendation.
LOW=(
    net.core.somaxconn=4096
    net.ipv4.tcp_max_syn_backlog=2048
    net.ipv4.tcp_syncookies=1
    net.core.netdev_max_backlog=1000
    fs.file-max=2466174
    fs.nr_open=1048576
    "net.ipv4.ip_local_port_range=32768 60999"
    net.ipv4.tcp_tw_reuse=2
    net.ipv4.tcp_fin_timeout=60
    net.ipv4.tcp_max_tw_buckets=131072
    net.ipv4.tcp_max_orphans=131072
    "net.ipv4.tcp_mem=287898 383866 575796"
    "net.ipv4.tcp_rmem=4096 131072 33554432"
    "net.ipv4.tcp_wmem=4096 16384 4194304"
    net.ipv4.tcp_slow_start_after_idle=1
)

# The recommended values, read from the conf file independently of tune.sh's parser.
recommended() {
    grep -v '^[[:space:]]*[#;]' "$CONF" | grep '=' | sed 's/^[[:space:]]*-//' |
        sed -E 's/[[:space:]]*=[[:space:]]*/=/; s/[[:space:]]+$//'
}

# --- 1. low values: check must fail and name the short settings -------------------------
P1="$TMP/proc-low"; E1="$TMP/etc-empty"; mkdir -p "$E1"
make_proc "$P1" "${LOW[@]}"
out="$("$TUNE" check --proc-root "$P1" --etc-root "$E1" 2>&1)"; rc=$?
if [[ $rc -ne 0 ]]; then pass "check fails on stock values (rc=$rc)"; else fail "check fails on stock values" "$out"; fi
for k in net.core.somaxconn fs.nr_open net.ipv4.tcp_mem net.ipv4.ip_local_port_range \
         net.ipv4.tcp_fin_timeout net.ipv4.tcp_rmem "limits: ferrocast hard nofile"; do
    if grep -F "$k" <<<"$out" | grep -q 'FAIL$'; then pass "check flags $k"; else fail "check flags $k" "$out"; fi
done
if grep -F net.ipv4.tcp_wmem <<<"$out" | grep -q ' ok$'; then pass "check accepts tcp_wmem already at recommendation"
else fail "check accepts tcp_wmem already at recommendation" "$out"; fi
if grep -F nf_conntrack_max <<<"$out" | grep -q 'n/a$'; then pass "optional conntrack key absent -> n/a"
else fail "optional conntrack key absent -> n/a" "$out"; fi

# --- 2. recommended values + installed limits: check passes ------------------------------
P2="$TMP/proc-rec"; E2="$TMP/etc-rec"
mapfile -t REC < <(recommended)
make_proc "$P2" "${REC[@]}"
mkdir -p "$E2/security/limits.d"; cp "$HERE/limits.conf" "$E2/security/limits.d/99-ferrocast.conf"
out="$("$TUNE" check --proc-root "$P2" --etc-root "$E2" 2>&1)"; rc=$?
if [[ $rc -eq 0 ]]; then pass "check passes on recommended values"; else fail "check passes on recommended values" "$out"; fi

# Higher-than-recommended where "more is fine", lower where "less is fine" still passes.
P2b="$TMP/proc-better"; cp -r "$P2" "$P2b"
make_proc "$P2b" net.core.somaxconn=131072 net.ipv4.tcp_fin_timeout=10 "net.ipv4.ip_local_port_range=1024 65535" \
    "net.ipv4.tcp_mem=3145728 4194304 6291456" "net.ipv4.tcp_rmem=4096 8192 8388608"
out="$("$TUNE" check --proc-root "$P2b" --etc-root "$E2" 2>&1)"; rc=$?
if [[ $rc -eq 0 ]]; then pass "check passes when values exceed the recommendation"; else fail "check passes when values exceed the recommendation" "$out"; fi

# Exactness where direction does not mean better: tw_reuse=2 (loopback only) is a shortfall.
P2c="$TMP/proc-twreuse"; cp -r "$P2" "$P2c"; make_proc "$P2c" net.ipv4.tcp_tw_reuse=2
"$TUNE" check --proc-root "$P2c" --etc-root "$E2" >/dev/null 2>&1; rc=$?
if [[ $rc -ne 0 ]]; then pass "check fails on tcp_tw_reuse=2"; else fail "check fails on tcp_tw_reuse=2"; fi

# A unit whose LimitNOFILE exceeds fs.nr_open is caught.
P2d="$TMP/proc-nropen"; cp -r "$P2" "$P2d"; make_proc "$P2d" fs.nr_open=1048576
out="$("$TUNE" check --proc-root "$P2d" --etc-root "$E2" 2>&1)"; rc=$?
if [[ $rc -ne 0 ]] && grep -F 'fs.nr_open >= nofile limit' <<<"$out" | grep -q 'FAIL$'; then
    pass "check fails when nofile limit > fs.nr_open"; else fail "check fails when nofile limit > fs.nr_open" "$out"; fi

# --- 3. apply on the low tree into an empty etc-root: files installed, check passes ------
P3="$TMP/proc-apply"; E3="$TMP/etc-apply"
make_proc "$P3" "${LOW[@]}"
out="$("$TUNE" apply --proc-root "$P3" --etc-root "$E3" --unit 2>&1)"; rc=$?
if [[ $rc -eq 0 ]]; then pass "apply exits 0"; else fail "apply exits 0" "$out"; fi
if cmp -s "$CONF" "$E3/sysctl.d/99-ferrocast.conf"; then pass "apply installs sysctl.d/99-ferrocast.conf"
else fail "apply installs sysctl.d/99-ferrocast.conf"; fi
if cmp -s "$HERE/limits.conf" "$E3/security/limits.d/99-ferrocast.conf"; then pass "apply installs security/limits.d/99-ferrocast.conf"
else fail "apply installs security/limits.d/99-ferrocast.conf"; fi
if cmp -s "$HERE/ferrocast.service" "$E3/systemd/system/ferrocast.service"; then pass "apply --unit installs the systemd unit"
else fail "apply --unit installs the systemd unit"; fi
out="$("$TUNE" check --proc-root "$P3" --etc-root "$E3" 2>&1)"; rc=$?
if [[ $rc -eq 0 ]]; then pass "check passes after apply"; else fail "check passes after apply" "$out"; fi
# The applied tree holds exactly the recommended values (kernel tab format).
bad=""
for kv in "${REC[@]}"; do
    key="${kv%%=*}"; val="${kv#*=}"; f="$P3/sys/${key//.//}"
    [[ "$key" == net.netfilter.* ]] && continue
    [[ "$(cat "$f" 2>/dev/null)" == "${val// /$'\t'}" ]] || bad+="$key "
done
if [[ -z "$bad" ]]; then pass "apply writes every recommended value"; else fail "apply writes every recommended value" "$bad"; fi
if [[ ! -e "$P3/sys/net/netfilter/nf_conntrack_max" ]]; then pass "apply skips optional key absent from the kernel"
else fail "apply skips optional key absent from the kernel"; fi

# --- 4. idempotency: a second apply changes nothing -----------------------------------
snap() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 stat -c '%n %s %Y %a' && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
before="$(snap "$E3"; snap "$P3")"
sleep 1   # a rewrite would show in the mtime
out="$("$TUNE" apply --proc-root "$P3" --etc-root "$E3" --unit 2>&1)"; rc=$?
after="$(snap "$E3"; snap "$P3")"
if [[ $rc -eq 0 ]]; then pass "second apply exits 0"; else fail "second apply exits 0" "$out"; fi
if [[ "$before" == "$after" ]]; then pass "second apply leaves every file identical (content and mtime)"
else fail "second apply leaves every file identical" "$(diff <(echo "$before") <(echo "$after"))"; fi
if ! grep -qE '^(installed|set) ' <<<"$out"; then pass "second apply reports nothing to change"
else fail "second apply reports nothing to change" "$out"; fi

# A changed installed file is put back.
echo "# local edit" >>"$E3/sysctl.d/99-ferrocast.conf"
"$TUNE" apply --proc-root "$P3" --etc-root "$E3" >/dev/null 2>&1
if cmp -s "$CONF" "$E3/sysctl.d/99-ferrocast.conf"; then pass "apply restores an edited file"; else fail "apply restores an edited file"; fi

# --- 5. optional key present in the kernel is checked and applied ----------------------
P5="$TMP/proc-conntrack"; cp -r "$P3" "$P5"; make_proc "$P5" net.netfilter.nf_conntrack_max=262144
"$TUNE" check --proc-root "$P5" --etc-root "$E3" >/dev/null 2>&1; rc=$?
if [[ $rc -ne 0 ]]; then pass "check flags low nf_conntrack_max when present"; else fail "check flags low nf_conntrack_max when present"; fi
"$TUNE" apply --proc-root "$P5" --etc-root "$E3" >/dev/null 2>&1; rc=$?
if [[ $rc -eq 0 && "$(cat "$P5/sys/net/netfilter/nf_conntrack_max")" == 2097152 ]]; then pass "apply raises nf_conntrack_max when present"
else fail "apply raises nf_conntrack_max when present"; fi

# --- 6. usage errors -------------------------------------------------------------------
"$TUNE" bogus >/dev/null 2>&1; rc=$?
if [[ $rc -eq 2 ]]; then pass "unknown command exits 2"; else fail "unknown command exits 2 (got $rc)"; fi
"$TUNE" check --proc-root "$TMP/nope" >/dev/null 2>&1; rc=$?
if [[ $rc -eq 2 ]]; then pass "missing proc root exits 2"; else fail "missing proc root exits 2 (got $rc)"; fi

# --- 7a. the real sysctl(8) parses the file (--dry-run: prints, writes nothing) -----------
if command -v sysctl >/dev/null && sysctl --help 2>&1 | grep -q -- '--dry-run'; then
    out="$(sysctl --dry-run -p "$CONF" 2>&1)"; rc=$?
    nkeys="$(recommended | wc -l)"
    if [[ $rc -eq 0 && "$(grep -c ' = ' <<<"$out")" -eq "$nkeys" ]]; then pass "sysctl --dry-run -p accepts all $nkeys keys"
    else fail "sysctl --dry-run -p accepts all $nkeys keys (rc=$rc)" "$out"; fi
fi

# --- 7. the real kernel, read-only: check runs and prints every key --------------------
if [[ -d /proc/sys/net ]]; then
    out="$("$TUNE" check 2>&1)"; rc=$?
    if [[ $rc -le 1 ]] && grep -q '^net.core.somaxconn' <<<"$out"; then pass "check against the live /proc runs (rc=$rc)"
    else fail "check against the live /proc runs" "$out"; fi
fi

summary
