"""TensorFlow Serving wire contracts (``tensorflow.serving.*``, ``tensorflow.*``).

Generated from ``proto/tfs/*.proto`` at install time into infergw's private pool:
TF Serving's client package registers the same names in protobuf's default pool.
The well-known types these files import are added to the private pool here, first.
"""

from google.protobuf import any_pb2, wrappers_pb2

from infergw.proto._pool import POOL

for _module in (any_pb2, wrappers_pb2):
    try:
        POOL.FindFileByName(_module.DESCRIPTOR.name)
    except KeyError:
        POOL.AddSerializedFile(_module.DESCRIPTOR.serialized_pb)
