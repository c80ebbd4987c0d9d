#!/usr/bin/env bash
# Run the whole stack locally: web, workers, beat and Flower from the Procfile, on SQLite and a
# local Redis (started here when none answers). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
mkdir -p var

# A development .env with a random secret, Flower password and metrics token, made once per
# checkout. Real environment variables win over it; honcho and Django both read it.
random() { .venv/bin/python -c "import secrets; print(secrets.token_urlsafe($1))"; }
if [[ ! -f .env ]]; then
    cat > .env <<ENV
# Local development settings, written by \`make run\`. See .env.example for every variable.
DEBUG=1
SECRET_KEY=$(random 40)
FLOWER_BASIC_AUTH=admin:$(random 12)
METRICS_BEARER_TOKEN=$(random 24)
ENV
    echo "Wrote .env for local development."
elif ! grep -q '^METRICS_BEARER_TOKEN=.' .env; then
    # A .env written before /metrics needed a token, or copied from .env.example (empty); the
    # last line wins when it is read.
    echo "METRICS_BEARER_TOKEN=$(random 24)" >> .env
fi
set -a
# shellcheck disable=SC1091
source .env
set +a

# The Procfile names plain `celery` and `gunicorn`: the virtualenv's.
export PATH="$PWD/.venv/bin:$PATH"
export DEBUG=${DEBUG:-1}
export PORT=${PORT:-8000}
export WEB_BIND=${WEB_BIND:-127.0.0.1}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}

# Start a private Redis if nothing answers at REDIS_URL and it points at this machine.
redis_host=$(.venv/bin/python -c "from urllib.parse import urlsplit as u; print(u('$REDIS_URL').hostname or '127.0.0.1')")
redis_port=$(.venv/bin/python -c "from urllib.parse import urlsplit as u; print(u('$REDIS_URL').port or 6379)")
started_redis=""
stop_started_redis() {
    if [[ -n $started_redis ]]; then
        redis-cli -h "$redis_host" -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
    fi
}
trap stop_started_redis EXIT
if ! redis-cli -h "$redis_host" -p "$redis_port" ping >/dev/null 2>&1; then
    if [[ $redis_host != 127.0.0.1 && $redis_host != localhost ]]; then
        echo "No Redis answers at $REDIS_URL." >&2
        exit 1
    fi
    echo "Starting a local Redis on port $redis_port (data in var/, stopped with the stack)."
    redis-server --port "$redis_port" --bind 127.0.0.1 --daemonize yes --dir "$PWD/var" \
        --dbfilename redis-dump.rdb --logfile "$PWD/var/redis.log" --pidfile "$PWD/var/redis.pid"
    started_redis=yes
    for _ in $(seq 50); do
        redis-cli -h "$redis_host" -p "$redis_port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
fi

.venv/bin/python manage.py migrate --noinput
.venv/bin/python manage.py sync_periodic_tasks
.venv/bin/python manage.py collectstatic --noinput --verbosity 0
admin_line=$(.venv/bin/python manage.py ensure_local_admin)

flower_user=${FLOWER_BASIC_AUTH%%:*}
flower_password=${FLOWER_BASIC_AUTH#*:}
cat <<INFO

  Site        http://localhost:$PORT/
  Admin       http://localhost:$PORT/admin/      ($admin_line)
  API docs    http://localhost:$PORT/api/docs
  Readiness   http://localhost:$PORT/readyz
  Metrics     curl -H "Authorization: Bearer ${METRICS_BEARER_TOKEN:-}" http://localhost:$PORT/metrics
              (METRICS_BEARER_TOKEN in .env; Prometheus: bearer_token in its scrape job)
  Flower      http://localhost:${FLOWER_PORT:-5555}/     (user $flower_user, password $flower_password)
  Emails      written to var/emails/ (set EMAIL_URL to use SMTP)

  Ctrl-C stops everything.

INFO

# The environment is already exported above; honcho must not read .env a second time.
# honcho runs in the background so that a SIGTERM to this script (not only Ctrl-C) stops the
# stack, and the Redis started above, instead of orphaning them.
.venv/bin/honcho start --procfile Procfile --env /dev/null --port "$PORT" &
honcho_pid=$!
trap 'kill -TERM "$honcho_pid" 2>/dev/null || true' INT TERM
while kill -0 "$honcho_pid" 2>/dev/null; do
    wait "$honcho_pid" || true
done
