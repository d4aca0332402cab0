#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster on 127.0.0.1 (Debian's postgresql package) and prints the
# admin URL that tests read from TEST_DATABASE_URL. Usage: .ci/postgres.sh [port]
set -euo pipefail
port=${1:-55432}
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$bindir/initdb" ] || { echo "postgresql is not installed (apt-get install postgresql)" >&2; exit 1; }
data=/tmp/clinic-pg-$port
if ! su postgres -s /bin/sh -c "$bindir/pg_ctl -D $data status" >/dev/null 2>&1; then
  rm -rf "$data"
  install -d -o postgres -g postgres "$data"
  pw=$(mktemp); echo clinic > "$pw"; chown postgres "$pw"
  su postgres -s /bin/sh -c "$bindir/initdb -D $data -A scram-sha-256 --pwfile=$pw -U postgres" >/dev/null
  rm -f "$pw"
  su postgres -s /bin/sh -c "$bindir/pg_ctl -D $data -l $data/log -o '-p $port -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off' -w start" >/dev/null
fi
echo "postgres://postgres:clinic@127.0.0.1:$port/postgres"
