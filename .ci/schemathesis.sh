#!/usr/bin/env bash
# Fuzzes the API against its own OpenAPI document with schemathesis (PyPI): for each of a clinic
# administrator, a provider and a patient, a fresh `clinic serve --demo` (its own data directory
# and loopback port, so one session's changes cannot disturb another's), that user signed in
# (staff enroll TOTP first: .ci/signin.py), and one schemathesis run with the session cookie.
# Checks: `not_a_server_error` (no 5xx) and `response_schema_conformance` (every answer matches
# the document). Any failure or schema error fails the script; so does a session that ended
# during its run (401s everywhere would pass the checks and prove nothing).
#
# Env: SCHEMATHESIS_CLINIC_BIN (default target/debug/clinic; not
# CLINIC_*, which `clinic` reads as configuration), SCHEMATHESIS (default: `schemathesis` on PATH,
# installed with pip when missing), SCHEMATHESIS_SECONDS (time budget per session, default 50:
# about three minutes in all on two cores), SCHEMATHESIS_EXAMPLES (per operation, default 25).
# One worker: with two, hypothesis's lambda-source cache (not thread-safe on Python 3.11) failed a
# run with "AST constructor recursion depth mismatch", an error of the tool, not of the API.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${SCHEMATHESIS_CLINIC_BIN:-target/debug/clinic}
seconds=${SCHEMATHESIS_SECONDS:-50}
examples=${SCHEMATHESIS_EXAMPLES:-25}
st=${SCHEMATHESIS:-schemathesis}
if ! command -v "$st" >/dev/null; then
  python3 -m pip install --quiet 'schemathesis>=4.32,<5'
  st=schemathesis
fi
st=$(command -v "$st")
[ -x "$bin" ] || { echo "no clinic binary at $bin (set SCHEMATHESIS_CLINIC_BIN)" >&2; exit 1; }

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Operations left out of every run, each for its reason:
exclude=(
  # Signs the session out: every later request of the run would be a 401.
  --exclude-path /api/v1/auth/logout
  # The consult signaling WebSocket: schemathesis speaks plain HTTP (the protocol has its own
  # tests in signaling/ and clinic-api/tests/consults.rs).
  --exclude-path /api/v1/consults/ws
  # Resets a user's MFA and revokes their sessions. schemathesis learns user ids from
  # GET /api/v1/users and reached the signed-in administrator's own id, ending the run's session.
  # (Disabling is kept: disabling oneself is refused, `cannot_disable_self`.)
  --exclude-path '/api/v1/users/{id}/reset-mfa'
)

failed=0
dirs=()
cleanup() {
  for d in "${dirs[@]}"; do
    [ -f "$d/pid" ] && kill "$(cat "$d/pid")" 2>/dev/null || true
  done
}
trap cleanup EXIT

run_as() {
  local user=$1 dir port base pid password cookie
  dir=$(mktemp -d /tmp/clinic-schemathesis.XXXXXX)
  dirs+=("$dir")
  port=$(free_port)
  base="http://127.0.0.1:$port"
  env -u DATABASE_URL CLINIC_DATA_DIR="$dir/data" CLINIC_LISTEN="127.0.0.1:$port" \
    "$bin" serve --demo >"$dir/stdout.log" 2>"$dir/server.log" &
  pid=$!
  echo "$pid" >"$dir/pid"
  for _ in $(seq 1 120); do
    grep -q '^clinic listening' "$dir/stdout.log" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { echo "clinic exited (logs in $dir)" >&2; return 1; }
    sleep 0.5
  done
  password=$(awk -v u="$user" '$1 == u { print $3; exit }' "$dir/stdout.log")
  [ -n "$password" ] || { echo "no demo login $user (logs in $dir)" >&2; return 1; }
  cookie=$(python3 .ci/signin.py "$base" "$user" "$password")
  echo "-- $user: schemathesis against $base (logs in $dir)"
  # From the session's directory, where schemathesis keeps its cache (.schemathesis/).
  if ! (cd "$dir" && "$st" run "$base/api/v1/openapi.json" \
    --header "Cookie: $cookie" \
    --checks not_a_server_error,response_schema_conformance \
    --max-examples "$examples" --max-time "$seconds" --workers 1 \
    --request-timeout 20 --no-color --suppress-health-check all \
    "${exclude[@]}" >"$dir/schemathesis.log" 2>&1); then
    failed=1
  fi
  # The summary, and every failure in full.
  if grep -q '=== FAILURES ===\|=== ERRORS ===' "$dir/schemathesis.log"; then
    sed -n '/=== FAILURES ===\|=== ERRORS ===/,$p' "$dir/schemathesis.log" | head -600
  else
    sed -n '/=== SUMMARY ===/,$p' "$dir/schemathesis.log"
  fi
  if [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: $cookie" "$base/api/v1/auth/session")" != 200 ]; then
    echo "$user: the session ended during the run, so its results prove nothing" >&2
    failed=1
  fi
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$dir/pid"
}

run_as admin
run_as dr.hartwell
run_as patient.ellis
if [ "$failed" != 0 ]; then
  echo "schemathesis found failures (logs in /tmp/clinic-schemathesis.*)" >&2
  exit 1
fi
echo "schemathesis: no failures"
