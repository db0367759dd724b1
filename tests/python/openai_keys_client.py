#!/usr/bin/env python3
"""Drives a Multiverse proxy in keys mode with the unmodified `openai` Python SDK.

Usage: openai_keys_client.py BASE_URL KEY RPM

Expects the proxy to route `demo` (chat) and `other` (chat), with KEY allowed `demo` only and
limited to RPM requests per minute (a small number; the limit starts full). Checks: a valid key
works and sees only its models; no key and a wrong key get 401 invalid_api_key
(AuthenticationError); a disallowed model gets 403 model_not_allowed (PermissionDeniedError);
RPM requests pass, the next gets 429 rate_limit_exceeded with Retry-After and x-ratelimit-*
headers (RateLimitError), and the SDK's own retry waits as told and then succeeds. Exits non-zero
on the first failed check; prints one summary line. Run by tests/tests/keys.rs.
"""

import sys
import time

import openai

MESSAGES = [{"role": "user", "content": "Say hello"}]


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def expect(exc_type, status, code, fn):
    try:
        fn()
    except exc_type as e:
        check(e.status_code == status, f"status {e.status_code}, expected {status}")
        check(e.code == code, f"code {e.code!r}, expected {code!r}: {e.body}")
        return e
    raise AssertionError(f"expected {exc_type.__name__} ({status} {code})")


def client(base, key, retries=0):
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=retries, timeout=30.0)


def main():
    if len(sys.argv) != 4:
        print(f"usage: {sys.argv[0]} BASE_URL KEY RPM", file=sys.stderr)
        return 2
    base, key, rpm = sys.argv[1].rstrip("/"), sys.argv[2], int(sys.argv[3])
    good = client(base, key)

    # /v1/models lists only the key's models (not rate limited).
    ids = [m.id for m in good.models.list()]
    check(ids == ["demo"], f"models.list() with the key: {ids}")

    # No key at all: the SDK needs a non-empty api_key, so send an empty bearer via headers.
    expect(
        openai.AuthenticationError,
        401,
        "invalid_api_key",
        lambda: client(base, "x").chat.completions.create(
            model="demo", messages=MESSAGES, extra_headers={"Authorization": ""}
        ),
    )
    expect(
        openai.AuthenticationError,
        401,
        "invalid_api_key",
        lambda: client(base, "mv-wrong").chat.completions.create(model="demo", messages=MESSAGES),
    )
    expect(
        openai.PermissionDeniedError,
        403,
        "model_not_allowed",
        lambda: good.chat.completions.create(model="other", messages=MESSAGES),
    )

    # The limit: `rpm` requests pass (the first one shows the headers), then 429.
    raw = good.chat.completions.with_raw_response.create(model="demo", messages=MESSAGES)
    h = raw.headers
    check(h.get("x-ratelimit-limit-requests") == str(rpm), f"limit header: {dict(h)}")
    check(h.get("x-ratelimit-remaining-requests") == str(rpm - 1), f"remaining: {dict(h)}")
    check(h.get("x-ratelimit-reset-requests"), f"no reset header: {dict(h)}")
    check(h.get("x-mock-credentials") == "none", f"the key reached the backend: {dict(h)}")
    check(raw.parse().choices[0].message.content, "empty completion")
    for _ in range(rpm - 1):
        good.chat.completions.create(model="demo", messages=MESSAGES)
    e = expect(
        openai.RateLimitError,
        429,
        "rate_limit_exceeded",
        lambda: good.chat.completions.create(model="demo", messages=MESSAGES),
    )
    retry_after = float(e.response.headers.get("retry-after", "0"))
    check(retry_after >= 1, f"Retry-After: {dict(e.response.headers)}")
    check(e.response.headers.get("x-ratelimit-remaining-requests") == "0", "remaining on 429")
    wait_ms = int(e.response.headers.get("retry-after-ms", "0"))
    check(wait_ms > 0, f"retry-after-ms: {dict(e.response.headers)}")

    # The SDK's own retry honours it: it waits about retry-after-ms, then succeeds.
    started = time.monotonic()
    resp = client(base, key, retries=3).chat.completions.create(model="demo", messages=MESSAGES)
    waited = time.monotonic() - started
    check(resp.choices[0].message.content, "empty completion after the retry")
    check(waited >= wait_ms / 1000 * 0.8, f"the SDK retried after {waited:.2f}s, told {wait_ms} ms")
    print(f"ok: keys mode, 429 after {rpm}, retry after {wait_ms} ms, SDK waited {waited:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
