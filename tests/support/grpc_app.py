"""A real gRPC server (grpcio) for the tests: the Echo service of echo.proto, whose stubs
`stubs()` generates with grpc_tools once per directory. Run as a script it serves on the
ports given (plaintext, HTTP/2 with prior knowledge) until terminated."""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from concurrent import futures
from pathlib import Path

HERE = Path(__file__).resolve().parent


def stubs(out: Path):
    """(echo_pb2, echo_pb2_grpc), generated from echo.proto into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "echo_pb2_grpc.py").exists():
        from grpc_tools import protoc
        import grpc_tools
        include = str(Path(grpc_tools.__file__).parent / "_proto")
        code = protoc.main(["protoc", f"-I{HERE}", f"-I{include}", f"--python_out={out}",
                            f"--grpc_python_out={out}", str(HERE / "echo.proto")])
        if code != 0:
            raise RuntimeError("protoc failed on echo.proto")
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    return importlib.import_module("echo_pb2"), importlib.import_module("echo_pb2_grpc")


def serve(ports: list[int], gen: Path) -> None:
    import grpc
    pb, rpc = stubs(gen)

    class Echo(rpc.EchoServicer):
        def Say(self, request, context):
            if request.text.startswith("fail:"):
                context.abort(grpc.StatusCode(_code(int(request.text[5:]))), "asked to fail")
            if request.text.startswith("sleep:"):
                time.sleep(float(request.text[6:]))
            context.set_trailing_metadata((("x-served-by", "grpc-app"),))
            return pb.Msg(text=request.text, count=len(request.blob), blob=request.blob)

        def Collect(self, request_iterator, context):
            texts, size = [], 0
            for m in request_iterator:
                texts.append(m.text)
                size += len(m.blob)
            return pb.Msg(text=",".join(texts), count=size)

        def Spread(self, request, context):
            for i in range(request.count):
                yield pb.Msg(text=str(i), blob=request.blob)

        def Chat(self, request_iterator, context):
            for m in request_iterator:
                yield pb.Msg(text=m.text, count=len(m.blob))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    rpc.add_EchoServicer_to_server(Echo(), server)
    for port in ports:
        server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def _code(number: int):
    import grpc
    return next(c for c in grpc.StatusCode if c.value[0] == number).value


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, action="append", required=True)
    ap.add_argument("--gen", type=Path, required=True)
    args = ap.parse_args()
    serve(args.port, args.gen)
