#!/usr/bin/env bash
# The Django library demo: a ferrocast node beside `manage.py runserver`.
#
#   bash examples/django-library/run.sh          # http://127.0.0.1:8000  (alice/alice, librarian/librarian)
#   bash examples/django-library/run.sh setup    # only create the venv, migrate and seed
#   bash examples/django-library/run.sh venv     # only create the venv (e2e/run.sh uses it)
#   bash examples/django-library/run.sh test     # Django tests against a real node (manage.py test)
#
# Environment (defaults): DJANGO_PORT (8000), FERROCAST_PORT (8180), FERROCAST_ADMIN_PORT (9190),
# LOAN_SECONDS (60: a loan is due a minute after borrowing, so the overdue reminder shows up),
# DIGEST_DELAY_SECONDS (20: a reader offline that long gets the digest e-mail of missed notices,
# printed here by the console e-mail backend; send_digests runs every 5 s),
# FERROCAST_BIN (the newest of target/release/ferrocast and target/debug/ferrocast; built
# with cargo when neither exists), PYTHON (python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$here"

PYTHON="${PYTHON:-python3}"
DJANGO_PORT="${DJANGO_PORT:-8000}"
FERROCAST_PORT="${FERROCAST_PORT:-8180}"
FERROCAST_ADMIN_PORT="${FERROCAST_ADMIN_PORT:-9190}"
export LOAN_SECONDS="${LOAN_SECONDS:-60}"
export DIGEST_DELAY_SECONDS="${DIGEST_DELAY_SECONDS:-20}"

log() { printf '== %s\n' "$*" >&2; }

setup_venv() {
  if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    "$PYTHON" -m venv .venv
  fi
  if [ ! -f .venv/.installed ] || [ requirements.txt -nt .venv/.installed ] \
     || [ "$repo/clients/python/pyproject.toml" -nt .venv/.installed ]; then
    log "installing Django and clients/python into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt -e "$repo/clients/python"
    touch .venv/.installed
  fi
}

find_ferrocast() {
  if [ -n "${FERROCAST_BIN:-}" ]; then echo "$FERROCAST_BIN"; return; fi
  local best="" b
  for b in "$repo/target/release/ferrocast" "$repo/target/debug/ferrocast"; do
    if [ -x "$b" ] && { [ -z "$best" ] || [ "$b" -nt "$best" ]; }; then best="$b"; fi
  done
  if [ -z "$best" ]; then
    log "building ferrocast (cargo build)"
    (cd "$repo" && cargo build --bin ferrocast >&2)
    best="$repo/target/debug/ferrocast"
  fi
  echo "$best"
}

setup_venv
[ "${1:-}" = "venv" ] && exit 0
if [ "${1:-}" = "test" ]; then
  export FERROCAST_BIN="$(find_ferrocast)"
  exec .venv/bin/python manage.py test library -v 2
fi
.venv/bin/python manage.py migrate --noinput -v0
.venv/bin/python manage.py seed_library
[ "${1:-}" = "setup" ] && exit 0

bin="$(find_ferrocast)"
export FERROCAST_LISTEN__PUBLIC="127.0.0.1:$FERROCAST_PORT"
export FERROCAST_LISTEN__ADMIN="127.0.0.1:$FERROCAST_ADMIN_PORT"
export FERROCAST_API_URL="http://127.0.0.1:$FERROCAST_PORT"
export FERROCAST_WEBHOOKS__URL="http://127.0.0.1:$DJANGO_PORT/ferrocast/webhook/"
mkdir -p run
log "ferrocast: $bin on :$FERROCAST_PORT (log: examples/django-library/run/ferrocast.log)"
"$bin" serve --config ferrocast.toml >run/ferrocast.log 2>&1 &
node_pid=$!
digest_pid=""
trap 'kill $node_pid $digest_pid 2>/dev/null; wait $node_pid $digest_pid 2>/dev/null || true' EXIT INT TERM

for _ in $(seq 100); do
  if .venv/bin/python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$FERROCAST_ADMIN_PORT/health/ready', timeout=1)" 2>/dev/null; then break; fi
  if ! kill -0 "$node_pid" 2>/dev/null; then cat run/ferrocast.log >&2; exit 1; fi
  sleep 0.1
done

# the digest e-mails (console backend: printed in this terminal)
.venv/bin/python manage.py send_digests --every 5 &
digest_pid=$!

log "Django on http://127.0.0.1:$DJANGO_PORT — log in as alice/alice (and librarian/librarian in another browser); loans last ${LOAN_SECONDS}s"
.venv/bin/python manage.py runserver "127.0.0.1:$DJANGO_PORT"
