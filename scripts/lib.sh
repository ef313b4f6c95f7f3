# Sourced by demo.sh and test.sh: a private PostgreSQL cluster in a directory of its own.

pg_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

# A TCP port nobody listens on right now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Runs a PostgreSQL server command; the server refuses root, so root runs it as postgres.
as_pg_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# pg_start DIR PORT: a new cluster in DIR, serving 127.0.0.1:PORT, trust auth.
pg_start() {
  local dir=$1 port=$2 bin
  bin=$(pg_bin)
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres:postgres "$dir"
    chmod a+x "$(dirname "$dir")" # mktemp makes it 0700; postgres must reach $dir
  fi
  as_pg_owner "$bin/initdb" -D "$dir" -U postgres --auth=trust >"$dir.initdb.log" 2>&1
  pg_run "$dir" "$port"
}

# pg_run DIR PORT: starts the existing cluster in DIR again (after pg_stop). Extra server
# options may come in HEIRLOOM_PG_OPTIONS (e.g. "-c shared_preload_libraries=pg_stat_statements").
pg_run() {
  local dir=$1 port=$2
  # fsync off: these clusters are throwaway and speed matters more than crash safety.
  as_pg_owner "$(pg_bin)/pg_ctl" -D "$dir" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300 ${HEIRLOOM_PG_OPTIONS:-}" \
    start >/dev/null
}

pg_stop() {
  local dir=$1
  [ -f "$dir/postmaster.pid" ] && as_pg_owner "$(pg_bin)/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1
  return 0
}

# Commands run when the script exits, newest first: each service started adds its stop.
HEIRLOOM_CLEANUP=""
on_exit() { eval "$HEIRLOOM_CLEANUP"; }
trap on_exit EXIT
cleanup_later() { HEIRLOOM_CLEANUP="$1; $HEIRLOOM_CLEANUP"; }

# Starts a private PostgreSQL for the rest of this script, stopped when it exits, and
# exports HEIRLOOM_TEST_DATABASE_URL (the integration tests create their databases in it).
start_test_postgres() {
  HEIRLOOM_PG_WORK=$(mktemp -d "${TMPDIR:-/tmp}/heirloom-pg.XXXXXX")
  cleanup_later 'pg_stop "$HEIRLOOM_PG_WORK/pg"; rm -rf "$HEIRLOOM_PG_WORK"'
  local port
  port=$(free_port)
  pg_start "$HEIRLOOM_PG_WORK/pg" "$port"
  export HEIRLOOM_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

# Starts an S3-compatible server (moto's, from the virtualenv) with one bucket for the
# rest of this script, and exports what the S3 artifact tests need to reach it.
start_test_s3() {
  local port log
  port=$(free_port)
  log=$(mktemp "${TMPDIR:-/tmp}/heirloom-s3.XXXXXX.log")
  "$HEIRLOOM_VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
  HEIRLOOM_S3_PID=$!
  cleanup_later 'kill "$HEIRLOOM_S3_PID" 2>/dev/null; rm -f "'"$log"'"'
  export AWS_ENDPOINT="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=heirloom-test AWS_SECRET_ACCESS_KEY=heirloom-test
  export HEIRLOOM_TEST_S3_BUCKET=heirloom-test
  # Waits for the server, then makes the bucket (moto accepts any credentials).
  "$HEIRLOOM_VENV/bin/python" - "$AWS_ENDPOINT/$HEIRLOOM_TEST_S3_BUCKET" <<'PY'
import sys, time, urllib.request
for attempt in range(100):
    try:
        urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="PUT"), timeout=2)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("the S3-compatible test server did not start")
PY
}
