#!/usr/bin/env bash
# Make sure PostgreSQL, Redis and RabbitMQ answer on loopback; start any that do not.
set -u
ok() { printf '  %-10s up\n' "$1"; }

if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then ok postgres; else
  echo "  postgres   starting"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  for _ in $(seq 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi

if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then ok redis; else
  echo "  redis      starting"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  for _ in $(seq 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
fi

if (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then ok rabbitmq; else
  echo "  rabbitmq   starting"
  rabbitmq-server -detached || true
  for _ in $(seq 60); do (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && break; sleep 1; done
fi

# faketime: the rate-limit exactness test runs one client with its clock 30 s off.
if ! command -v faketime >/dev/null 2>&1; then
  echo "installing faketime"
  apt-get install -y -q faketime >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q faketime >/dev/null 2>&1; } \
    || echo "faketime unavailable: the clock-skew test will be skipped"
fi

pg_isready -h 127.0.0.1 -p 5432 -q && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null
