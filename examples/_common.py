"""Shared settings of the example scripts: where the gateway is, and a tiny JSON client for the
control plane's operator API (standard library only, so the admin examples need no packages).

Environment (all optional):
  MULTIVERSE_URL            the proxy, for clients              (default http://127.0.0.1:8080)
  MULTIVERSE_ADMIN_URL      the proxy's admin listener          (default http://127.0.0.1:9901)
  MULTIVERSE_CONTROL_URL    a control plane's operator API      (default http://127.0.0.1:9000)
  MULTIVERSE_ADMIN_KEY      an operator API key ([admin] api_keys / api_key_file)
"""

import json
import os
import sys
import urllib.error
import urllib.request

PROXY_URL = os.environ.get("MULTIVERSE_URL", "http://127.0.0.1:8080").rstrip("/")
PROXY_ADMIN_URL = os.environ.get("MULTIVERSE_ADMIN_URL", "http://127.0.0.1:9901").rstrip("/")
CONTROL_URL = os.environ.get("MULTIVERSE_CONTROL_URL", "http://127.0.0.1:9000").rstrip("/")


class ApiError(Exception):
    """An error answer of the operator API: {"error", "code", "timestamp"}."""

    def __init__(self, status, code, message):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code


def admin_key():
    key = os.environ.get("MULTIVERSE_ADMIN_KEY", "")
    if not key:
        sys.exit("set MULTIVERSE_ADMIN_KEY to an operator API key of the control plane")
    return key


def request(method, url, body=None, key=None, timeout=30):
    """Sends a JSON request; returns (status, parsed JSON or None). Raises ApiError on an error
    answer and OSError when the server cannot be reached."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("accept", "application/json")
    if data is not None:
        req.add_header("content-type", "application/json")
    if key:
        req.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            err = json.loads(raw)
        except ValueError:
            err = {}
        if isinstance(err, dict) and "code" in err:
            raise ApiError(e.code, err.get("code"), err.get("error", "")) from None
        return e.code, err if err else None
