"""The cheapest Python gRPC proxy: grpc.aio in, grpc.aio out, bytes untouched.

    python bench/aio_passthrough.py --listen 127.0.0.1:9000 --upstream 127.0.0.1:8001

One generic handler for OIP ``ModelInfer`` forwards the request bytes unchanged (identity
serializers on both sides) to the upstream and returns the reply bytes. No parsing, no
routing, no metadata, no metrics: what any Python gRPC proxy pays at least, i.e. the
grpc.aio floor the gateway's own logic sits on. Prints nothing; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc

from infergw.wire import grpc_channel

SERVICE = "inference.GRPCInferenceService"
METHOD = "ModelInfer"


async def serve(listen: str, upstream: str) -> None:
    channel = grpc_channel.aio_channel(upstream)
    # No (de)serializers: request and reply stay bytes end to end.
    infer = channel.unary_unary(f"/{SERVICE}/{METHOD}")

    async def model_infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            return await infer(request)
        except grpc.aio.AioRpcError as err:
            await context.abort(err.code(), err.details() or "")
            raise  # unreachable: abort raises

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(model_infer)}
    )
    server = grpc.aio.server(options=grpc_channel.server_options())
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"cannot listen on {listen}")
    await server.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)
    await channel.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--listen", required=True, help="HOST:PORT to serve on")
    p.add_argument("--upstream", required=True, help="HOST:PORT of the Triton gRPC endpoint")
    args = p.parse_args()
    asyncio.run(serve(args.listen, args.upstream))


if __name__ == "__main__":
    main()
