#!/usr/bin/env python3
"""Drives a Multiverse proxy with a plain `grpcio` client of TEI's `tei.v1` API.

Usage: grpc_client.py ADDR MODEL [--direct]

ADDR is host:port of the proxy's client listener (or, with --direct, of a TEI / mock-tei
gRPC server: then the proxy-only checks, the x-multiverse-endpoint header and NOT_FOUND for an
unknown model, are skipped). MODEL is sent as `x-model` metadata on every call.

The stubs are generated at run time from proto/proto/tei/v1/tei.proto with grpc_tools.protoc,
so the client is exactly what a TEI user would generate. Exits non-zero with a message on the
first failed check; prints one summary line on success. Run by tests/tests/python_clients.rs.
"""

import importlib
import math
import os
import queue
import sys
import tempfile

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.normpath(os.path.join(HERE, "..", "..", "proto", "proto", "tei", "v1", "tei.proto"))
TIMEOUT = 30.0
INPUTS = ["hello", "the quick brown fox", "jumps over", "the lazy dog", "multiverse"]


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def generate_stubs(out_dir):
    """Compiles tei.proto into out_dir and imports tei_pb2 / tei_pb2_grpc from it."""
    check(os.path.exists(PROTO), f"{PROTO} not found")
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{os.path.dirname(PROTO)}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            PROTO,
        ]
    )
    check(rc == 0, f"grpc_tools.protoc failed on {PROTO} (exit {rc})")
    sys.path.insert(0, out_dir)
    return importlib.import_module("tei_pb2"), importlib.import_module("tei_pb2_grpc")


def l2(v):
    return math.sqrt(sum(x * x for x in v))


def header(metadata, key):
    for k, v in metadata or ():
        if k.lower() == key:
            return v
    return None


def run(addr, model, direct):
    with tempfile.TemporaryDirectory(prefix="tei-stubs-") as out:
        pb, pb_grpc = generate_stubs(out)
        md = [("x-model", model)]
        with grpc.insecure_channel(addr) as channel:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
            stub = pb_grpc.EmbedStub(channel)

            # Unary Embed, with the call object for its metadata and status.
            unary = {}
            endpoint = None
            for i, text in enumerate(INPUTS):
                resp, call = stub.Embed.with_call(
                    pb.EmbedRequest(inputs=text, normalize=True), metadata=md, timeout=TIMEOUT
                )
                check(call.code() == grpc.StatusCode.OK, f"Embed status {call.code()}")
                check(len(resp.embeddings) > 0, f"Embed({text!r}) returned no embeddings")
                norm = l2(resp.embeddings)
                check(abs(norm - 1.0) < 1e-3, f"Embed({text!r}) L2 norm is {norm}, not ~1")
                unary[text] = list(resp.embeddings)
                if i == 0:
                    initial = call.initial_metadata()
                    trailing = call.trailing_metadata()
                    endpoint = header(initial, "x-multiverse-endpoint")
                    if not direct:
                        check(
                            endpoint,
                            f"no x-multiverse-endpoint in initial metadata: {initial}",
                        )
                    # grpc-status travels in the trailers; grpcio surfaces it as code().
                    check(trailing is not None, "no trailing metadata")
            dims = len(unary[INPUTS[0]])
            check(
                len({tuple(v) for v in unary.values()}) == len(INPUTS),
                "different inputs gave identical embeddings",
            )
            # Deterministic: the same input again gives the same vector.
            again = stub.Embed(
                pb.EmbedRequest(inputs=INPUTS[0], normalize=True), metadata=md, timeout=TIMEOUT
            )
            check(list(again.embeddings) == unary[INPUTS[0]], "Embed is not deterministic")

            # Bidi EmbedStream, ping-pong: each request is sent only after the previous
            # response arrived, so a proxy that buffered the request stream (instead of
            # forwarding it frame by frame) would stall until the deadline.
            got = queue.Queue()

            def requests():
                for text in INPUTS:
                    yield pb.EmbedRequest(inputs=text, normalize=True)
                    try:
                        got.get(timeout=TIMEOUT)
                    except queue.Empty:
                        return

            responses = stub.EmbedStream(requests(), metadata=md, timeout=TIMEOUT)
            streamed = []
            for resp in responses:
                streamed.append(list(resp.embeddings))
                got.put(None)
            check(
                responses.code() == grpc.StatusCode.OK,
                f"EmbedStream status {responses.code()}: {responses.details()}",
            )
            check(
                len(streamed) == len(INPUTS),
                f"EmbedStream: {len(streamed)} responses for {len(INPUTS)} requests",
            )
            for i, (text, vec) in enumerate(zip(INPUTS, streamed)):
                check(
                    vec == unary[text],
                    f"EmbedStream response {i} differs from Embed({text!r}) (out of order?)",
                )
            if not direct:
                stream_endpoint = header(responses.initial_metadata(), "x-multiverse-endpoint")
                check(
                    stream_endpoint,
                    f"no x-multiverse-endpoint on EmbedStream: {responses.initial_metadata()}",
                )

            # An unknown model is a gRPC status from the proxy, not a transport failure.
            if not direct:
                try:
                    stub.Embed(
                        pb.EmbedRequest(inputs="hello"),
                        metadata=[("x-model", "no-such-model")],
                        timeout=TIMEOUT,
                    )
                except grpc.RpcError as e:
                    check(
                        e.code() == grpc.StatusCode.NOT_FOUND,
                        f"unknown model: expected NOT_FOUND, got {e.code()}: {e.details()}",
                    )
                else:
                    raise AssertionError("unknown model: Embed succeeded, expected NOT_FOUND")

    print(
        f"grpcio {grpc.__version__}: Embed x{len(INPUTS) + 1} ({dims} dims, unit norm), "
        f"EmbedStream {len(streamed)}/{len(INPUTS)} in order, "
        + ("direct (proxy checks skipped)" if direct else f"endpoint={endpoint}, unknown model NOT_FOUND")
    )
    return 0


def main():
    args = [a for a in sys.argv[1:] if a != "--direct"]
    direct = "--direct" in sys.argv[1:]
    if len(args) != 2:
        print(f"usage: {sys.argv[0]} ADDR MODEL [--direct]", file=sys.stderr)
        return 2
    try:
        return run(args[0], args[1], direct)
    except AssertionError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(f"FAIL: RPC error {e.code()}: {e.details()}", file=sys.stderr)
        return 1
    except grpc.FutureTimeoutError:
        print(f"FAIL: no gRPC connection to {args[0]} within {TIMEOUT}s", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
