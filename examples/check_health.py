#!/usr/bin/env python3
"""An operator's health check of a Multiverse deployment: the proxy (alive, ready, routing table
version), the control plane (/health), every registered backend's health with its last check,
and the proxies subscribed to the control plane with the version each ACKed.

  MULTIVERSE_ADMIN_KEY=... python3 examples/check_health.py

Exits 0 when everything is healthy, 1 otherwise (usable from cron or a monitoring check).
"""

import sys

from _common import CONTROL_URL, PROXY_ADMIN_URL, ApiError, admin_key, request


def main():
    problems = []

    def get(url, key=None):
        try:
            return request("GET", url, key=key, timeout=5)
        except (ApiError, OSError) as e:
            problems.append(f"{url}: {e}")
            return None, None

    status, body = get(f"{PROXY_ADMIN_URL}/healthz")
    print(f"proxy alive: {'yes' if status == 200 else 'NO'}")
    status, body = get(f"{PROXY_ADMIN_URL}/ready")
    if status == 200:
        print(f"proxy ready: yes (routing table version {body.get('version')})")
    else:
        reason = body.get("reason") if isinstance(body, dict) else None
        print(f"proxy ready: NO ({reason or status})")
        problems.append("proxy not ready")

    status, body = get(f"{CONTROL_URL}/health")
    if status == 200:
        print(f"control plane: ok (id {body.get('control_plane_id')})")
    else:
        problems.append("control plane not healthy")
        print("control plane: NOT OK")

    key = admin_key()
    status, body = get(f"{CONTROL_URL}/admin/backends", key)
    for b in (body or {}).get("backends", []):
        h = b.get("health", {})
        last = h.get("last_check") or {}
        detail = f"last check {last.get('at')}, {last.get('latency_ms')} ms" if last else "not checked yet"
        if last and not last.get("ok"):
            detail += f", {last.get('reason')}"
        print(f"backend {b['name']}: {h.get('status')} ({detail}) models={','.join(b['models'])}")
        if h.get("status") == "unhealthy":
            problems.append(f"backend {b['name']} is {h.get('status')}")

    # Behind the key unless the control plane sets [admin] public_read.
    status, body = get(f"{CONTROL_URL}/proxies", key)
    if body:
        current = body.get("current_version")
        for px in body.get("proxies", []):
            state = "connected" if px.get("connected") else "disconnected"
            print(f"subscribed proxy {px['node_id']}: {state}, acked {px.get('acked_version')} of {current}")
            if px.get("last_nack"):
                print(f"  last NACK: {px['last_nack']}")

    if problems:
        print("UNHEALTHY: " + "; ".join(problems))
        sys.exit(1)
    print("all healthy")


if __name__ == "__main__":
    main()
