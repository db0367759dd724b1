#!/usr/bin/env bash
# List the models the gateway serves (OpenAI list format; each entry's `multiverse` field has its
# kind and healthy endpoint count). Shell twin of list_models.py.
#
#   examples/list_models.sh
set -euo pipefail
proxy="${MULTIVERSE_URL:-http://127.0.0.1:8080}"
curl --silent --show-error --fail-with-body "$proxy/v1/models"
echo
