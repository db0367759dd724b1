#!/usr/bin/env bash
# Register an OpenAI-compatible model server with a Multiverse control plane (curl only).
# Shell twin of register_server.py.
#
#   MULTIVERSE_ADMIN_KEY=... examples/register_server.sh NAME URL [MODEL...]
#
# Without MODELs the control plane discovers them from the server's /v1/models. An upstream key
# for the server comes from MULTIVERSE_BACKEND_API_KEY. Prints the registered backend (JSON) or
# the error ({"error","code","timestamp"}) and exits non-zero.
set -euo pipefail
control="${MULTIVERSE_CONTROL_URL:-http://127.0.0.1:9000}"
: "${MULTIVERSE_ADMIN_KEY:?set MULTIVERSE_ADMIN_KEY to an operator API key of the control plane}"
[ $# -ge 2 ] || { echo "usage: $0 NAME URL [MODEL...]" >&2; exit 2; }
name=$1 url=$2
shift 2

# Build the JSON body; names, URLs and model names cannot contain quotes or backslashes
# (the control plane refuses such names anyway), so no JSON escaping is needed beyond a check.
for v in "$name" "$url" "$@" "${MULTIVERSE_BACKEND_API_KEY:-}"; do
  case "$v" in *[\"\\]*) echo "quotes and backslashes are not allowed: $v" >&2; exit 2 ;; esac
done
body="{\"name\":\"$name\",\"url\":\"$url\""
if [ $# -gt 0 ]; then
  models=$(printf '"%s",' "$@")
  body+=",\"models\":[${models%,}]"
fi
if [ -n "${MULTIVERSE_BACKEND_API_KEY:-}" ]; then
  body+=",\"api_key\":\"$MULTIVERSE_BACKEND_API_KEY\""
fi
body+="}"

# --fail-with-body: exit non-zero on an error status but still print the error JSON.
curl --silent --show-error --fail-with-body -X POST "$control/admin/backends" \
  -H "Authorization: Bearer $MULTIVERSE_ADMIN_KEY" -H 'content-type: application/json' \
  --data "$body"
echo
