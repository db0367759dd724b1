#!/usr/bin/env bash
# Installs what the deploy tests (tests/tests/deploy/) need, only what is missing (sourced by
# scripts/test): Debian's podman + runc (container images), prometheus (promtool and a real
# server) and systemd (systemd-analyze), through apt-get when root; the PyPI validators of
# deploy/test-requirements.txt through pip. kubectl (kustomize) is used when installed.
# Debian packages, measured on a 2-core machine: about 10 s for all of them.
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing ${missing[*]} (apt-get)" >&2
    # --no-install-recommends keeps prometheus from pulling in node-exporter and its collectors;
    # package scripts cannot start services here (no init), and nothing needs them to.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; } ||
      echo "==> could not install ${missing[*]}: the deploy tests that need them will fail" >&2
  else
    echo "==> missing ${missing[*]} (install them as root): the deploy tests that need them will fail" >&2
  fi
fi
python3 -m pip install --quiet --disable-pip-version-check -r deploy/test-requirements.txt
