"""gRPC server reflection in both versions, ``grpc.reflection.v1`` and ``v1alpha``.

grpcio-reflection ships only v1alpha, and newer tools (grpcurl, Postman, grpcui) ask
v1 first. v1 is the same messages under another package name, so one servicer answers
both: v1's method is registered with v1alpha's messages (the bytes are the same), and
v1's file descriptor (v1alpha's, renamed) is put in the pool so reflection can describe
v1 itself too. Answers come from infergw's private pool, with services listed sorted,
so every call gets the same answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA = reflection.SERVICE_NAME  # "grpc.reflection.v1alpha.ServerReflection"
V1 = "grpc.reflection.v1.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"


def enable_reflection(
    server: grpc.aio.Server, services: Sequence[str], pool: DescriptorPool
) -> None:
    """Serve reflection of ``services`` (plus both reflection services) from ``pool``."""
    _add_descriptors(pool)
    servicer = reflection.aio.ReflectionServicer((*services, V1ALPHA, V1), pool=pool)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1, {"ServerReflectionInfo": v1}),)
    )


def _add_descriptors(pool: DescriptorPool) -> None:
    """health's and both reflection files, once (reflection describes what it lists)."""
    for name, serialized in (
        (health_pb2.DESCRIPTOR.name, health_pb2.DESCRIPTOR.serialized_pb),
        (reflection_pb2.DESCRIPTOR.name, reflection_pb2.DESCRIPTOR.serialized_pb),
        (V1_FILE, None),
    ):
        try:
            pool.FindFileByName(name)
        except KeyError:
            pool.AddSerializedFile(serialized if serialized is not None else _v1_file())


def _v1_file() -> bytes:
    """v1alpha's file descriptor under v1's file and package names."""
    old, new = "grpc.reflection.v1alpha", "grpc.reflection.v1"
    proto = descriptor_pb2.FileDescriptorProto.FromString(reflection_pb2.DESCRIPTOR.serialized_pb)
    proto.name, proto.package = V1_FILE, new
    proto.options.Clear()  # v1alpha's java/go package options do not describe v1
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # message-typed fields only
                field.type_name = field.type_name.replace(f".{old}.", f".{new}.")
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(f".{old}.", f".{new}.")
            method.output_type = method.output_type.replace(f".{old}.", f".{new}.")
    return proto.SerializeToString()
