"""The protocols a client speaks to an Open Inference Protocol endpoint, named once.

The load generator's ``--protocol``, its senders and the SDK's client factory all
key on these; the values are what users type and what results record.
"""

from __future__ import annotations

from enum import StrEnum


class Protocol(StrEnum):
    GRPC = "grpc"  # OIP gRPC (inference.GRPCInferenceService)
    REST = "rest"  # OIP REST, tensors as JSON
    REST_BINARY = "rest-binary"  # OIP REST with the binary tensor extension

    @property
    def is_rest(self) -> bool:
        return self is not Protocol.GRPC

    @classmethod
    def parse(cls, text: str) -> Protocol:
        """``text`` as a protocol, or a ``ValueError`` listing the valid names."""
        try:
            return cls(text.strip())
        except ValueError:
            raise ValueError(
                f"unknown protocol {text!r}; use one of {', '.join(p.value for p in cls)}"
            ) from None
