#!/usr/bin/env bash
# An operator's health check with curl: proxy alive and ready, control plane healthy, every
# backend's health, the subscribed proxies. Shell twin of check_health.py; exits 1 if any check
# fails.
#
#   MULTIVERSE_ADMIN_KEY=... examples/check_health.sh
set -uo pipefail
proxy_admin="${MULTIVERSE_ADMIN_URL:-http://127.0.0.1:9901}"
control="${MULTIVERSE_CONTROL_URL:-http://127.0.0.1:9000}"
: "${MULTIVERSE_ADMIN_KEY:?set MULTIVERSE_ADMIN_KEY to an operator API key of the control plane}"
failed=0

check() { # check LABEL URL [curl args...]: prints the answer, counts a failure
  local label=$1 url=$2
  shift 2
  printf '%s: ' "$label"
  if ! curl --silent --show-error --fail-with-body --max-time 5 "$@" "$url"; then
    failed=1
    printf ' (FAILED)'
  fi
  echo
}

check "proxy alive" "$proxy_admin/healthz"
check "proxy ready" "$proxy_admin/ready"
check "control plane" "$control/health"
check "backends" "$control/admin/backends" -H "Authorization: Bearer $MULTIVERSE_ADMIN_KEY"
# Behind the key unless the control plane sets [admin] public_read.
check "subscribed proxies" "$control/proxies" -H "Authorization: Bearer $MULTIVERSE_ADMIN_KEY"
# A backend whose status is not healthy fails the check too.
if curl --silent --max-time 5 -H "Authorization: Bearer $MULTIVERSE_ADMIN_KEY" "$control/admin/backends" \
  | grep -q '"status":"unhealthy"'; then
  echo "a backend is not healthy"
  failed=1
fi
[ "$failed" = 0 ] && echo "all healthy" || echo "UNHEALTHY"
exit "$failed"
