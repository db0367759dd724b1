#!/usr/bin/env python3
"""Use a model through Multiverse with the unmodified openai SDK: one chat completion, then the
same request streamed (server-sent events, printed as they arrive).

  pip install openai
  python3 examples/use_model.py --model llama-3-8b "Write a haiku about GPUs"

The proxy routes by the request's `model`; the `x-multiverse-endpoint` response header names
the server that answered.
"""

import argparse
import os
import sys

try:
    import openai
except ImportError:
    sys.exit("this example needs the openai package: pip install openai")

from _common import PROXY_URL


def main():
    p = argparse.ArgumentParser(description="Chat with a model through Multiverse.")
    p.add_argument("--model", required=True)
    p.add_argument("prompt", nargs="?", default="Say hello in five words.")
    args = p.parse_args()

    # The gateway does not check client keys; the SDK wants one anyway.
    client = openai.OpenAI(base_url=f"{PROXY_URL}/v1", api_key=os.environ.get("OPENAI_API_KEY", "unused"))
    messages = [{"role": "user", "content": args.prompt}]
    try:
        raw = client.chat.completions.with_raw_response.create(model=args.model, messages=messages)
        completion = raw.parse()
        print(f"endpoint={raw.headers.get('x-multiverse-endpoint')}")
        print(f"non-streaming: {completion.choices[0].message.content!r} "
              f"({completion.usage.total_tokens if completion.usage else '?'} tokens)")

        chunks = 0
        text = []
        print("streaming: ", end="", flush=True)
        for chunk in client.chat.completions.create(model=args.model, messages=messages, stream=True):
            chunks += 1
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
                print(chunk.choices[0].delta.content, end="", flush=True)
        print()
        print(f"streamed {chunks} chunks, {len(''.join(text))} characters")
    except openai.APIStatusError as e:
        # Errors come in OpenAI's format, {"error": {"message", "type", "code"}}; the SDK hands
        # over the inner object.
        err = e.body if isinstance(e.body, dict) else {}
        err = err.get("error", err)
        sys.exit(f"request failed: {e.status_code} {err.get('code')}: {err.get('message')}")
    except openai.APIConnectionError as e:
        sys.exit(f"cannot reach the gateway at {PROXY_URL}: {e}")


if __name__ == "__main__":
    main()
