#!/usr/bin/env bash
# A private PostgreSQL for trying Heirloom on one machine, from the distribution's server
# packages (`apt-get install postgresql`; scripts/setup.sh installs it):
#   scripts/postgres.sh start DIR [PORT]   a new cluster in DIR (or the one there), on
#                                          127.0.0.1:PORT (default 5432), trust auth; prints
#                                          its URL for --database-url
#   scripts/postgres.sh stop DIR
# As root it runs the server as the `postgres` user, which PostgreSQL requires. For
# anything beyond trying it out, point --database-url at a PostgreSQL you run.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/lib.sh"

command=${1:-}
dir=${2:-}
port=${3:-5432}
if [ -z "$command" ] || [ -z "$dir" ]; then
  echo "usage: scripts/postgres.sh start|stop DIR [PORT]" >&2
  exit 2
fi
[ -n "$(pg_bin)" ] || { echo "no PostgreSQL server binaries: apt-get install postgresql" >&2; exit 1; }
dir=$(mkdir -p "$dir" && cd "$dir" && pwd)
case "$command" in
  start)
    if [ -f "$dir/PG_VERSION" ]; then pg_run "$dir" "$port"; else pg_start "$dir" "$port"; fi
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  stop) pg_stop "$dir" ;;
  *)
    echo "usage: scripts/postgres.sh start|stop DIR [PORT]" >&2
    exit 2
    ;;
esac
