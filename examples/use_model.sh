#!/usr/bin/env bash
# Use a model through Multiverse with curl: one chat completion, then the same request streamed
# (server-sent events, printed as they arrive). Shell twin of use_model.py.
#
#   examples/use_model.sh MODEL ["prompt"]
set -euo pipefail
proxy="${MULTIVERSE_URL:-http://127.0.0.1:8080}"
[ $# -ge 1 ] || { echo "usage: $0 MODEL [PROMPT]" >&2; exit 2; }
model=$1
prompt=${2:-Say hello in five words.}
case "$model$prompt" in *[\"\\]*) echo "quotes and backslashes are not allowed" >&2; exit 2 ;; esac
messages="[{\"role\":\"user\",\"content\":\"$prompt\"}]"

echo "== non-streaming (response headers, then the completion)"
# -D - prints the response headers: x-multiverse-endpoint names the server that answered.
curl --silent --show-error --fail-with-body -D - "$proxy/v1/chat/completions" \
  -H 'content-type: application/json' \
  --data "{\"model\":\"$model\",\"messages\":$messages}"
echo
echo "== streaming (each 'data:' line is one chunk; the last is [DONE])"
curl --silent --show-error --fail-with-body --no-buffer "$proxy/v1/chat/completions" \
  -H 'content-type: application/json' \
  --data "{\"model\":\"$model\",\"stream\":true,\"messages\":$messages}"
