#!/bin/sh
# Entrypoint of the multiverse-control-tei image. The control plane advertises its TEI instances
# to proxies at `[instances] advertise_host`, which on Kubernetes is the pod's IP, known only when
# the pod starts. If MULTIVERSE_ADVERTISE_HOST is set, every `@ADVERTISE_HOST@` in the config
# file named by MULTIVERSE_CONTROL_CONFIG is replaced by it (into a copy under $TMPDIR); then the
# control plane runs with the given arguments.
set -eu
if [ -n "${MULTIVERSE_ADVERTISE_HOST:-}" ] && [ -n "${MULTIVERSE_CONTROL_CONFIG:-}" ]; then
  case "$MULTIVERSE_ADVERTISE_HOST" in
    *[!A-Za-z0-9.:-]*) echo "MULTIVERSE_ADVERTISE_HOST must be a host name or IP address" >&2; exit 2 ;;
  esac
  rendered="${TMPDIR:-/tmp}/multiverse-control.toml"
  sed "s/@ADVERTISE_HOST@/${MULTIVERSE_ADVERTISE_HOST}/g" "$MULTIVERSE_CONTROL_CONFIG" >"$rendered"
  MULTIVERSE_CONTROL_CONFIG="$rendered"
  export MULTIVERSE_CONTROL_CONFIG
fi
exec /usr/local/bin/multiverse-control "$@"
