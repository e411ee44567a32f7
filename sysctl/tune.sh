#!/usr/bin/env bash
# tune.sh -- check and apply the OS settings a ferrocast node needs (sysctl/99-ferrocast.conf,
# sysctl/limits.conf, optionally sysctl/ferrocast.service).
#
#   tune.sh check  [--proc-root DIR] [--etc-root DIR]
#       Prints current vs recommended for every setting; exit 1 when anything falls short.
#   tune.sh apply  [--proc-root DIR] [--etc-root DIR] [--unit]
#       Idempotent: installs the sysctl file into ETC/sysctl.d and the limits file into
#       ETC/security/limits.d (only rewritten when the content differs), loads the values, then
#       runs `check`. With --unit it also installs ETC/systemd/system/ferrocast.service.
#
# --proc-root DIR  where the kernel's sysctl tree lives (default /proc; values are read from
#                  DIR/sys/...). Point it at a copy to test without touching the kernel.
# --etc-root DIR   the /etc to install into and check (default /etc).
#
# Loading the values: only with the real /proc AND the real /etc does `apply` touch the kernel
# (`sysctl --system`, which also loads the other sysctl.d files in their usual order). With another
# proc-root the values are written into DIR/sys/... directly (sysctl(8) only writes /proc). With
# the real /proc but another etc-root (building an image) the files are installed and nothing is
# loaded.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONF_SRC="$HERE/99-ferrocast.conf"
LIMITS_SRC="$HERE/limits.conf"
UNIT_SRC="$HERE/ferrocast.service"

PROC_ROOT=/proc
ETC_ROOT=/etc
WITH_UNIT=0
SERVICE_USER=ferrocast

# How "current" is compared with "recommended". Keys not listed use `ge`.
#   ge     current >= recommended            le     current <= recommended
#   eq     identical                         range  current range covers the recommended one
#   ge3    each of the three numbers >=      buf    min/default/max: default <= rec, max >= rec
declare -A RULE=(
    [net.ipv4.tcp_syncookies]=eq
    [net.ipv4.tcp_tw_reuse]=eq
    [net.ipv4.tcp_slow_start_after_idle]=eq
    [net.ipv4.tcp_fin_timeout]=le
    [net.ipv4.ip_local_port_range]=range
    [net.ipv4.tcp_mem]=ge3
    [net.ipv4.tcp_rmem]=buf
    [net.ipv4.tcp_wmem]=buf
)

usage() {
    sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
}

die() { echo "tune.sh: $*" >&2; exit 2; }

# Parse the sysctl file into parallel arrays KEYS / VALS / OPTIONAL (1 for "-key").
load_conf() {
    KEYS=(); VALS=(); OPTIONAL=()
    local line key val opt
    while IFS= read -r line || [[ -n "$line" ]]; do
        line="${line#"${line%%[![:space:]]*}"}"
        [[ -z "$line" || "$line" == \#* || "$line" == \;* ]] && continue
        [[ "$line" == *=* ]] || die "$CONF_SRC: not key = value: $line"
        key="${line%%=*}"; val="${line#*=}"
        key="$(echo "$key" | xargs)"; val="$(echo "$val" | xargs)"
        opt=0
        if [[ "$key" == -* ]]; then opt=1; key="${key#-}"; fi
        KEYS+=("$key"); VALS+=("$val"); OPTIONAL+=("$opt")
    done <"$CONF_SRC"
}

# The file under PROC_ROOT holding a sysctl key.
key_path() { echo "$PROC_ROOT/sys/${1//.//}"; }

# Normalise whitespace (the kernel separates vector values with tabs).
norm() { echo "$*" | xargs; }

# compare RULE CURRENT RECOMMENDED -> exit 0 when current satisfies the recommendation
compare() {
    local rule="$1" cur rec
    read -r -a cur <<<"$2"
    read -r -a rec <<<"$3"
    local i
    for i in "${cur[@]}" "${rec[@]}"; do
        [[ "$i" =~ ^-?[0-9]+$ ]] || { [[ "$rule" == eq && "$2" == "$3" ]]; return; }
    done
    case "$rule" in
        ge) (( cur[0] >= rec[0] )) ;;
        le) (( cur[0] <= rec[0] )) ;;
        eq) [[ "${cur[*]}" == "${rec[*]}" ]] ;;
        range) (( ${#cur[@]} == 2 && cur[0] <= rec[0] && cur[1] >= rec[1] )) ;;
        ge3) (( ${#cur[@]} == 3 && cur[0] >= rec[0] && cur[1] >= rec[1] && cur[2] >= rec[2] )) ;;
        buf) (( ${#cur[@]} == 3 && cur[1] <= rec[1] && cur[2] >= rec[2] )) ;;
        *) die "unknown rule $rule" ;;
    esac
}

FAILS=0
row() { printf '%-38s %-26s %-26s %-6s %s\n' "$@"; }

# The hard nofile limit limits.conf / limits.d give the service user (highest matching line).
limits_nofile() {
    local f best="" dom typ item val
    for f in "$ETC_ROOT/security/limits.conf" "$ETC_ROOT"/security/limits.d/*.conf; do
        [[ -f "$f" ]] || continue
        while read -r dom typ item val _; do
            [[ "$dom" == "$SERVICE_USER" || "$dom" == "*" ]] || continue
            [[ "$typ" == hard || "$typ" == - ]] || continue
            [[ "$item" == nofile ]] || continue
            [[ "$val" == unlimited ]] && val=$((1 << 62))
            [[ "$val" =~ ^[0-9]+$ ]] || continue
            if [[ -z "$best" ]] || (( val > best )); then best="$val"; fi
        done < <(grep -v '^[[:space:]]*#' "$f")
    done
    echo "$best"
}

unit_value() { # unit_value FILE KEY -> last KEY= value in FILE
    sed -n "s/^[[:space:]]*$2=//p" "$1" | tail -n 1 | xargs
}

cmd_check() {
    load_conf
    FAILS=0
    echo "proc-root: $PROC_ROOT   etc-root: $ETC_ROOT"
    row SETTING CURRENT RECOMMENDED RULE STATUS
    local i key rec rule path cur status
    for i in "${!KEYS[@]}"; do
        key="${KEYS[$i]}"; rec="${VALS[$i]}"; rule="${RULE[$key]:-ge}"
        path="$(key_path "$key")"
        if [[ ! -r "$path" ]]; then
            if [[ "${OPTIONAL[$i]}" == 1 ]]; then
                row "$key" "(absent)" "$rec" "$rule" "n/a"
            else
                row "$key" "(missing)" "$rec" "$rule" "FAIL"; FAILS=$((FAILS + 1))
            fi
            continue
        fi
        cur="$(norm "$(cat "$path")")"
        if compare "$rule" "$cur" "$rec"; then status=ok; else status=FAIL; FAILS=$((FAILS + 1)); fi
        row "$key" "$cur" "$rec" "$rule" "$status"
    done

    # Open-file limit for the service user: limits.d must be installed and fit under nr_open.
    local want_nofile have_nofile nr_open
    want_nofile="$(awk -v u="$SERVICE_USER" '$1==u && $2=="hard" && $3=="nofile" {print $4}' "$LIMITS_SRC")"
    have_nofile="$(limits_nofile)"
    if [[ -z "$have_nofile" ]]; then
        row "limits: $SERVICE_USER hard nofile" "(not set)" "$want_nofile" ge FAIL; FAILS=$((FAILS + 1))
    elif compare ge "$have_nofile" "$want_nofile"; then
        row "limits: $SERVICE_USER hard nofile" "$have_nofile" "$want_nofile" ge ok
    else
        row "limits: $SERVICE_USER hard nofile" "$have_nofile" "$want_nofile" ge FAIL; FAILS=$((FAILS + 1))
    fi

    # The unit is optional (packages may ship their own); when installed, check LimitNOFILE.
    local unit="$ETC_ROOT/systemd/system/ferrocast.service" unit_nofile
    want_unit="$(unit_value "$UNIT_SRC" LimitNOFILE)"
    if [[ -f "$unit" ]]; then
        unit_nofile="$(unit_value "$unit" LimitNOFILE)"
        unit_nofile="${unit_nofile##*:}"   # LimitNOFILE=soft:hard -> hard
        if [[ -n "$unit_nofile" ]] && compare ge "$unit_nofile" "$want_unit"; then
            row "unit: LimitNOFILE" "$unit_nofile" "$want_unit" ge ok
        else
            row "unit: LimitNOFILE" "${unit_nofile:-(not set)}" "$want_unit" ge FAIL; FAILS=$((FAILS + 1))
        fi
    else
        row "unit: LimitNOFILE" "(no unit)" "$want_unit" ge "n/a"
        unit_nofile=""
    fi

    # A LimitNOFILE / limits.conf value above fs.nr_open makes the service fail to start.
    nr_open="$(norm "$(cat "$(key_path fs.nr_open)" 2>/dev/null || echo 0)")"
    local top="${unit_nofile:-0}"
    [[ -n "$have_nofile" ]] && (( have_nofile > top )) && top="$have_nofile"
    if (( top > 0 )); then
        if (( nr_open >= top )); then
            row "fs.nr_open >= nofile limit" "$nr_open" ">= $top" ge ok
        else
            row "fs.nr_open >= nofile limit" "$nr_open" ">= $top" ge FAIL; FAILS=$((FAILS + 1))
        fi
    fi

    echo
    if (( FAILS > 0 )); then
        echo "$FAILS setting(s) below recommendation: run 'sudo $0 apply' (see docs/operations.md)"
        return 1
    fi
    echo "all settings meet the recommendation"
}

# install_file SRC DEST: write DEST only when its content differs (keeps mtime when unchanged).
install_file() {
    local src="$1" dest="$2"
    mkdir -p "$(dirname "$dest")"
    if [[ -f "$dest" ]] && cmp -s "$src" "$dest"; then
        echo "unchanged  $dest"
    else
        install -m 0644 "$src" "$dest"
        echo "installed  $dest"
    fi
}

# Write the values straight into a proc tree that is not the kernel's (tests, dry runs).
write_proc_tree() {
    load_conf
    local i key path val cur
    for i in "${!KEYS[@]}"; do
        key="${KEYS[$i]}"; path="$(key_path "$key")"
        if [[ ! -e "$path" && "${OPTIONAL[$i]}" == 1 ]]; then continue; fi
        val="$(norm "${VALS[$i]}")"
        cur="$(norm "$(cat "$path" 2>/dev/null || true)")"
        [[ "$cur" == "$val" ]] && continue
        mkdir -p "$(dirname "$path")"
        # The kernel prints vectors tab-separated; do the same so the tree looks like /proc.
        printf '%s\n' "${val// /$'\t'}" >"$path"
        echo "set        $key = $val  ($path)"
    done
}

cmd_apply() {
    install_file "$CONF_SRC" "$ETC_ROOT/sysctl.d/99-ferrocast.conf"
    install_file "$LIMITS_SRC" "$ETC_ROOT/security/limits.d/99-ferrocast.conf"
    if (( WITH_UNIT )); then
        install_file "$UNIT_SRC" "$ETC_ROOT/systemd/system/ferrocast.service"
        if [[ "$ETC_ROOT" == /etc ]] && command -v systemctl >/dev/null; then
            systemctl daemon-reload || echo "tune.sh: systemctl daemon-reload failed" >&2
        fi
    fi
    if [[ "$PROC_ROOT" == /proc ]]; then
        command -v sysctl >/dev/null || die "sysctl(8) not found (Debian: apt-get install procps)"
        if [[ "$ETC_ROOT" == /etc ]]; then
            echo "running    sysctl --system"
            sysctl --system >/dev/null
        else
            # Installing into another tree (an image being built, a test) must not change the
            # kernel this script happens to run on.
            echo "skipped    loading into the running kernel: --etc-root is not /etc"
            echo "           (load later with: sysctl -p $ETC_ROOT/sysctl.d/99-ferrocast.conf)"
            echo
            cmd_check || true
            return 0
        fi
    else
        write_proc_tree
    fi
    echo
    cmd_check
}

main() {
    [[ $# -ge 1 ]] || usage
    local cmd="$1"; shift
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --proc-root) [[ $# -ge 2 ]] || die "--proc-root needs a directory"; PROC_ROOT="${2%/}"; shift 2 ;;
            --proc-root=*) PROC_ROOT="${1#*=}"; PROC_ROOT="${PROC_ROOT%/}"; shift ;;
            --etc-root) [[ $# -ge 2 ]] || die "--etc-root needs a directory"; ETC_ROOT="${2%/}"; shift 2 ;;
            --etc-root=*) ETC_ROOT="${1#*=}"; ETC_ROOT="${ETC_ROOT%/}"; shift ;;
            --unit) WITH_UNIT=1; shift ;;
            -h|--help) usage ;;
            *) die "unknown argument: $1" ;;
        esac
    done
    [[ -d "$PROC_ROOT" ]] || die "proc root $PROC_ROOT is not a directory"
    case "$cmd" in
        check) cmd_check ;;
        apply) mkdir -p "$ETC_ROOT"; cmd_apply ;;
        -h|--help|help) usage ;;
        *) die "unknown command: $cmd (check | apply)" ;;
    esac
}

main "$@"
