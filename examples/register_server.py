#!/usr/bin/env python3
"""Register an OpenAI-compatible model server (vLLM, llama.cpp, Ollama, SGLang, ...) with a
Multiverse control plane, so every proxy routes its models.

The control plane checks the server (GET /v1/models) before it accepts it, discovers its models
when --model is not given, and keeps checking it. Re-running with the same name fails with
BACKEND_EXISTS; --replace updates the registration instead.

  MULTIVERSE_ADMIN_KEY=... python3 examples/register_server.py --name my-vllm \\
      --url http://10.0.0.5:8000 --model llama-3-8b [--api-key sk-...] [--replace]

The upstream --api-key (or MULTIVERSE_BACKEND_API_KEY) is what the proxies send to the server;
it is stored by the control plane and never shown again.
"""

import argparse
import os
import sys
import urllib.parse

from _common import CONTROL_URL, ApiError, admin_key, request


def main():
    p = argparse.ArgumentParser(description="Register a model server with Multiverse.")
    p.add_argument("--name", required=True, help="unique name (letters, digits, - _ .)")
    p.add_argument("--url", required=True, help="the server's base URL, e.g. http://host:8000")
    p.add_argument("--model", action="append", default=[], help="a model it serves (repeatable; default: discovered)")
    p.add_argument("--kind", default=None, help="chat (default), completion, embedding, rerank, classify")
    p.add_argument("--weight", type=int, default=None, help="relative weight for weighted balancing")
    p.add_argument("--api-key", default=os.environ.get("MULTIVERSE_BACKEND_API_KEY"), help="upstream key the proxies send")
    p.add_argument("--replace", action="store_true", help="update the backend of that name if it exists")
    args = p.parse_args()

    body = {"name": args.name, "url": args.url}
    if args.model:
        body["models"] = args.model
    if args.kind:
        body["kind"] = args.kind
    if args.weight is not None:
        body["weight"] = args.weight
    if args.api_key:
        body["api_key"] = args.api_key
    key = admin_key()

    try:
        try:
            _, backend = request("POST", f"{CONTROL_URL}/admin/backends", body, key)
            action = "registered"
        except ApiError as e:
            if e.code != "BACKEND_EXISTS" or not args.replace:
                raise
            _, listing = request("GET", f"{CONTROL_URL}/admin/backends", key=key)
            existing = next(b for b in listing["backends"] if b["name"] == args.name)
            bid = urllib.parse.quote(existing["id"], safe="")
            _, backend = request("PUT", f"{CONTROL_URL}/admin/backends/{bid}", body, key)
            action = "updated"
    except ApiError as e:
        sys.exit(f"registration refused: {e}")
    except OSError as e:
        sys.exit(f"cannot reach the control plane at {CONTROL_URL}: {e}")

    health = backend.get("health", {}).get("status", "unknown")
    print(f"{action} {backend['name']} id={backend['id']} models={','.join(backend['models'])} "
          f"kind={backend['kind']} health={health} api_key={'set' if backend.get('has_api_key') else 'none'}")


if __name__ == "__main__":
    main()
