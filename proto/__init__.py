"""Generated protobuf modules for infergw's wire contracts (see ``proto/*.proto``).

``grpc_service_pb2`` is produced by ``setup.py`` at install time.
"""
