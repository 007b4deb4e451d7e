#!/usr/bin/env bash
# Make sure what the test suite needs is running: Redis and PostgreSQL on 127.0.0.1, a
# `lifeline` database role, and Debian's Chromium for the browser tests. Starts what is
# installed but stopped; installs what is missing with apt-get when running as root;
# otherwise stops with a message saying what to install.
set -euo pipefail

REDIS_PORT="${LIFELINE_TEST_REDIS_PORT:-6379}"
PG_PORT="${LIFELINE_TEST_PG_PORT:-5432}"
APT_UPDATED=0

say() { echo "ensure-services: $*"; }
die() { echo "ensure-services: $*" >&2; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
  is_root && command -v apt-get >/dev/null || return 1
  if [ "$APT_UPDATED" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  say "installing $* with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

redis_up() {
  (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" && printf 'PING\r\n' >&3 && read -r -t 2 reply <&3 \
    && [[ "$reply" == +PONG* ]]) 2>/dev/null
}

wait_for() {  # wait_for NAME CHECK...
  local name="$1"; shift
  for _ in $(seq 1 60); do "$@" && return 0; sleep 0.5; done
  die "$name did not come up on 127.0.0.1"
}

ensure_redis() {
  redis_up && { say "redis is up on $REDIS_PORT"; return; }
  command -v redis-server >/dev/null || apt_install redis-server \
    || die "Redis is not running and not installed: install redis-server (apt-get install redis-server) and re-run."
  say "starting redis-server on $REDIS_PORT"
  local dir; dir="$(mktemp -d /tmp/lifeline-redis.XXXX)"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
    --appendonly no --dir "$dir" --logfile "$dir/redis.log"
  wait_for redis redis_up
}

pg_up() {
  if command -v pg_isready >/dev/null; then pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; else port_open "$PG_PORT"; fi
}

ensure_postgres() {
  if ! pg_up; then
    if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
      apt_install postgresql \
        || die "PostgreSQL is not running and not installed: install postgresql (apt-get install postgresql) and re-run."
    fi
    local version; version="$(ls /etc/postgresql | sort -V | tail -1)"
    say "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for postgresql pg_up
  else
    say "postgresql is up on $PG_PORT"
  fi
  ensure_role
}

psql_admin() {
  if is_root && id postgres >/dev/null 2>&1; then
    runuser -u postgres -- psql -X -q -p "$PG_PORT" -d postgres -v ON_ERROR_STOP=1 "$@"
  else
    psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"
  fi
}

ensure_role() {
  # The suite connects as lifeline/lifeline over TCP; it creates and drops its own databases.
  if psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'lifeline'" | grep -q 1; then
    return
  fi
  say "creating the PostgreSQL role 'lifeline'"
  psql_admin -c "CREATE ROLE lifeline LOGIN SUPERUSER PASSWORD 'lifeline'" \
    || die "could not create the role 'lifeline': create it (CREATE ROLE lifeline LOGIN SUPERUSER PASSWORD 'lifeline') and re-run."
}

ensure_chromium() {
  [ -x /usr/bin/chromium ] && return
  apt_install chromium \
    || die "the browser tests need Debian's chromium at /usr/bin/chromium: apt-get install chromium"
}

ensure_pg_tools() {
  # Tests that stop PostgreSQL run their own cluster with initdb/pg_ctl.
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && return
  apt_install postgresql || die "initdb is missing: apt-get install postgresql"
}

ensure_redis
ensure_postgres
ensure_pg_tools
ensure_chromium
say "ready"
