#!/usr/bin/env python3
"""A plain `grpcio` client of TEI's `tei.v1` API against a proxy that requires keys.

Usage: grpc_keys_client.py ADDR MODEL KEY OTHER_MODEL

KEY may use MODEL but not OTHER_MODEL. Checks: Embed without `authorization` metadata and with
a wrong key is UNAUTHENTICATED; with `authorization: Bearer KEY` it succeeds; OTHER_MODEL with
the key is PERMISSION_DENIED. Stubs are generated as grpc_client.py does. Run by
tests/tests/keys.rs.
"""

import sys
import tempfile

import grpc

from grpc_client import TIMEOUT, check, generate_stubs


def expect_code(code, fn):
    try:
        fn()
    except grpc.RpcError as e:
        check(e.code() == code, f"expected {code}, got {e.code()}: {e.details()}")
        return e.details()
    raise AssertionError(f"expected {code}, the call succeeded")


def main():
    if len(sys.argv) != 5:
        print(f"usage: {sys.argv[0]} ADDR MODEL KEY OTHER_MODEL", file=sys.stderr)
        return 2
    addr, model, key, other = sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="tei-stubs-") as out:
        pb, pb_grpc = generate_stubs(out)
        with grpc.insecure_channel(addr) as channel:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
            stub = pb_grpc.EmbedStub(channel)
            req = pb.EmbedRequest(inputs="hello", normalize=True)

            def embed(md):
                return stub.Embed(req, metadata=md, timeout=TIMEOUT)

            missing = expect_code(
                grpc.StatusCode.UNAUTHENTICATED, lambda: embed([("x-model", model)])
            )
            expect_code(
                grpc.StatusCode.UNAUTHENTICATED,
                lambda: embed([("x-model", model), ("authorization", "Bearer mv-wrong")]),
            )
            resp = embed([("x-model", model), ("authorization", f"Bearer {key}")])
            check(len(resp.embeddings) > 0, "no embeddings with the key")
            expect_code(
                grpc.StatusCode.PERMISSION_DENIED,
                lambda: embed([("x-model", other), ("authorization", f"Bearer {key}")]),
            )
    check(key not in (missing or ""), "the status message carries the key")
    print(f"ok: UNAUTHENTICATED without / with a wrong key ({missing!r}), OK with it, "
          "PERMISSION_DENIED for another model")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
