#!/usr/bin/env bash
# Makes `cmake` available for pingora's zlib-ng build (sourced by scripts/demo and .ci/run).
# Uses the system cmake if present, else Debian's package when root, else the `cmake` wheel
# from PyPI (no root needed). Exports CMAKE so the cmake crate finds it in every case.
if command -v cmake >/dev/null 2>&1; then
  export CMAKE="${CMAKE:-$(command -v cmake)}"
  return 0 2>/dev/null || exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "==> installing cmake (apt-get)" >&2
  if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null 2>&1 ||
     { apt-get update -qq >/dev/null 2>&1 &&
       DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null 2>&1; }; then
    export CMAKE="$(command -v cmake)"
    return 0 2>/dev/null || exit 0
  fi
fi
echo "==> installing cmake (pip)" >&2
python3 -m pip install --quiet --user cmake >&2 || python3 -m pip install --quiet cmake >&2
CMAKE="$(python3 -c 'import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, "cmake"))')"
export CMAKE
export PATH="$(dirname "$CMAKE"):$PATH"
