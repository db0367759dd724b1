#!/usr/bin/env python3
"""Drives a Multiverse proxy with the unmodified `openai` Python SDK.

Usage: openai_client.py BASE_URL   (e.g. http://127.0.0.1:8080; "/v1" is appended)

Expects the proxy to route the chat model `demo` and the embedding model `embed-demo`.
Exits non-zero with a message on the first failed check; prints one summary line on success.
Run by tests/tests/python_clients.rs.
"""

import sys

import openai

MESSAGES = [{"role": "user", "content": "Say hello"}]


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def main():
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} BASE_URL", file=sys.stderr)
        return 2
    base = sys.argv[1].rstrip("/")
    client = openai.OpenAI(
        base_url=base + "/v1", api_key="unused", max_retries=0, timeout=30.0
    )

    # GET /v1/models, answered by the proxy from its routing table.
    ids = [m.id for m in client.models.list()]
    for want in ("demo", "embed-demo"):
        check(want in ids, f"models.list() lacks {want!r}: {ids}")

    # Non-streamed chat completion.
    resp = client.chat.completions.create(model="demo", messages=MESSAGES)
    check(resp.choices, f"chat completion has no choices: {resp}")
    msg = resp.choices[0].message
    check(msg.role == "assistant", f"role is {msg.role!r}, not 'assistant'")
    check(msg.content, f"chat completion content is empty: {resp}")
    check(
        resp.usage is not None and resp.usage.total_tokens > 0,
        f"usage.total_tokens not > 0: {resp.usage}",
    )

    # Streamed chat completion (SSE through the proxy).
    stream = client.chat.completions.create(
        model="demo", messages=MESSAGES, stream=True
    )
    pieces = []
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta is not None and choice.delta.content:
                pieces.append(choice.delta.content)
    streamed = "".join(pieces)
    check(len(pieces) >= 3, f"only {len(pieces)} content chunks streamed: {pieces}")
    check(streamed.strip(), "streamed content is empty")

    # The raw response, for the proxy's own header.
    raw = client.chat.completions.with_raw_response.create(
        model="demo", messages=MESSAGES
    )
    endpoint = raw.headers.get("x-multiverse-endpoint")
    check(endpoint, f"no x-multiverse-endpoint header: {dict(raw.headers)}")
    parsed = raw.parse()
    check(parsed.choices[0].message.content, "raw-response completion is empty")

    # Embeddings.
    emb = client.embeddings.create(model="embed-demo", input=["a", "b"])
    vecs = [d.embedding for d in sorted(emb.data, key=lambda d: d.index)]
    check(len(vecs) == 2, f"expected 2 embeddings, got {len(vecs)}")
    check(len(vecs[0]) > 0, "embedding has zero length")
    check(
        len(vecs[0]) == len(vecs[1]),
        f"embedding lengths differ: {len(vecs[0])} vs {len(vecs[1])}",
    )
    check(vecs[0] != vecs[1], "embeddings of 'a' and 'b' are identical")

    print(
        f"openai {openai.__version__}: models={sorted(ids)} "
        f"chat={len(msg.content.split())} words, stream={len(pieces)} chunks, "
        f"endpoint={endpoint}, embeddings=2x{len(vecs[0])}"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
    except openai.OpenAIError as e:
        print(f"FAIL: openai error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
