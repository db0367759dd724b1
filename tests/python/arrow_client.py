#!/usr/bin/env python3
"""Drives a Multiverse proxy's Arrow batch embedding with `pyarrow` and a plain `grpcio` client.

Usage: arrow_client.py ADDR MODEL

ADDR is host:port of the proxy's `[batch_embed] listen`. Sends a pyarrow Table of texts as an
Arrow IPC stream (LZ4 frames) to multiverse.embed.v1.BatchEmbed/EmbedArrow and checks the
answer: one row per input, in input order (each row equals a one-row call's embedding), an
`embedding` list<float32> and an `error` string per row; a row too long for TEI fails alone;
an unknown model is NOT_FOUND and a missing text column INVALID_ARGUMENT.

The stubs are generated at run time from proto/proto/multiverse/embed/v1/embed.proto with
grpc_tools.protoc. Exits non-zero on the first failed check; prints one summary line on success.
Run by tests/tests/python_clients.rs.
"""

import importlib
import os
import sys
import tempfile

import grpc
import pyarrow as pa
import pyarrow.ipc as ipc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto", "proto"))
PROTO = os.path.join(ROOT, "multiverse", "embed", "v1", "embed.proto")
TIMEOUT = 60.0


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def generate_stubs(out_dir):
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{ROOT}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            PROTO,
        ]
    )
    check(rc == 0, f"grpc_tools.protoc failed on {PROTO} (exit {rc})")
    sys.path.insert(0, out_dir)
    pb2 = importlib.import_module("multiverse.embed.v1.embed_pb2")
    grpc_pb2 = importlib.import_module("multiverse.embed.v1.embed_pb2_grpc")
    return pb2, grpc_pb2


def to_ipc(table, compression="lz4"):
    sink = pa.BufferOutputStream()
    options = ipc.IpcWriteOptions(compression=compression)
    with ipc.new_stream(sink, table.schema, options=options) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data):
    return ipc.open_stream(pa.py_buffer(data)).read_all()


def main():
    addr, model = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as out:
        pb2, pb2_grpc = generate_stubs(out)
        options = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
        with grpc.insecure_channel(addr, options=options) as channel:
            stub = pb2_grpc.BatchEmbedStub(channel)
            texts = [f"python row {i}" for i in range(13)]
            texts[5] = "word " * 600  # over mock-tei's 512 tokens
            table = pa.table({"id": pa.array(range(13), pa.int64()), "text": pa.array(texts)})
            resp = stub.EmbedArrow(
                pb2.EmbedArrowRequest(model=model, arrow_ipc=to_ipc(table)), timeout=TIMEOUT
            )
            got = from_ipc(resp.arrow_ipc)
            check(got.num_rows == 13, f"13 rows, got {got.num_rows}")
            check(got.schema.field("embedding").type == pa.list_(pa.float32()), str(got.schema))
            check(got.schema.field("error").type == pa.string(), str(got.schema))
            check(resp.failed_rows == 1, f"failed_rows {resp.failed_rows}")
            emb = got.column("embedding").to_pylist()
            err = got.column("error").to_pylist()
            check(emb[5] is None and err[5] and "413" in err[5], f"row 5: {err[5]}")
            for i in (0, 6, 12):
                one = pa.table({"text": pa.array([texts[i]], pa.large_string())})
                single = stub.EmbedArrow(
                    pb2.EmbedArrowRequest(
                        model=model, arrow_ipc=to_ipc(one, compression=None)
                    ),
                    timeout=TIMEOUT,
                )
                alone = from_ipc(single.arrow_ipc).column("embedding").to_pylist()[0]
                check(err[i] is None, f"row {i}: {err[i]}")
                check(emb[i] == alone, f"row {i} is text {i}'s embedding")
            try:
                stub.EmbedArrow(
                    pb2.EmbedArrowRequest(model="no-such-model", arrow_ipc=to_ipc(table)),
                    timeout=TIMEOUT,
                )
                check(False, "unknown model accepted")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.NOT_FOUND, f"unknown model: {e.code()}")
            try:
                stub.EmbedArrow(
                    pb2.EmbedArrowRequest(model=model, arrow_ipc=to_ipc(table), text_column="x"),
                    timeout=TIMEOUT,
                )
                check(False, "missing column accepted")
            except grpc.RpcError as e:
                check(
                    e.code() == grpc.StatusCode.INVALID_ARGUMENT and "no column" in e.details(),
                    f"missing column: {e.code()} {e.details()}",
                )
    print(f"ok rows={got.num_rows} dims={len(emb[0])} failed_rows={resp.failed_rows}")


if __name__ == "__main__":
    main()
