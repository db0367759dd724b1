#!/usr/bin/env python3
"""List the models the gateway serves (GET /v1/models, the OpenAI list format) with the openai
SDK, and for each its kind and how many of its endpoints are healthy (Multiverse's
`multiverse` extension of each entry).

  pip install openai
  python3 examples/list_models.py
"""

import os
import sys

try:
    import openai
except ImportError:
    sys.exit("this example needs the openai package: pip install openai")

from _common import PROXY_URL


def main():
    client = openai.OpenAI(base_url=f"{PROXY_URL}/v1", api_key=os.environ.get("OPENAI_API_KEY", "unused"))
    try:
        models = list(client.models.list())
    except openai.APIStatusError as e:
        sys.exit(f"listing failed: {e.status_code} {e.message}")
    except openai.APIConnectionError as e:
        sys.exit(f"cannot reach the gateway at {PROXY_URL}: {e}")
    if not models:
        print("no models yet: register a server (examples/register_server.py)")
        return
    for m in models:
        extra = (m.model_extra or {}).get("multiverse", {})
        print(f"{m.id}: kind={extra.get('kind', '?')} healthy endpoints: "
              f"{extra.get('healthy_endpoints', '?')}/{extra.get('endpoints', '?')}")


if __name__ == "__main__":
    main()
