"""Model metadata and statistics: one converter pair per wire (OIP JSON, OIP proto).

Triton's statistics fields must come out exactly as the REST frontend and the gRPC
frontend have always sent them, and every shape a server sends must come back to the
same core values, whichever wire it took.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict

from infergw.proto import grpc_service_pb2 as pb
from infergw.vocab.errors import BackendError
from infergw.vocab.types import Duration, ModelMetadata, ModelStatistics, TensorSpec
from infergw.wire import oip_json, oip_proto

META = ModelMetadata(
    name="yolo",
    versions=("1", "2"),
    platform="python",
    inputs=(TensorSpec("images", "FP32", (1, 3, 640, 640)), TensorSpec("text", "BYTES", (-1,))),
    outputs=(TensorSpec("output", "FP32", (1, 25200, 85)),),
)
BIG = 2**63 - 1  # uint64 counters: protobuf's JSON writes them as strings
STATS = [
    ModelStatistics(
        name="identity",
        version="1",
        last_inference_ms=1_700_000_000_123,
        inference_count=7,
        execution_count=5,
        success=Duration(7, 70_000),
        fail=Duration(1, 10),
        queue=Duration(7, 1000),
        compute_input=Duration(7, 300),
        compute_infer=Duration(7, BIG),
        compute_output=Duration(7, 200),
    ),
    ModelStatistics(name="minilm"),
]

# What GET /v2/models/identity/stats has answered (Triton's shape; no response cache).
STATS_JSON_0 = {
    "name": "identity",
    "version": "1",
    "last_inference": 1_700_000_000_123,
    "inference_count": 7,
    "execution_count": 5,
    "inference_stats": {
        "success": {"count": 7, "ns": 70_000},
        "fail": {"count": 1, "ns": 10},
        "queue": {"count": 7, "ns": 1000},
        "compute_input": {"count": 7, "ns": 300},
        "compute_infer": {"count": 7, "ns": BIG},
        "compute_output": {"count": 7, "ns": 200},
        "cache_hit": {"count": 0, "ns": 0},
        "cache_miss": {"count": 0, "ns": 0},
    },
    "batch_stats": [],
    "memory_usage": [],
}


def test_metadata_json_shape_and_round_trip() -> None:
    doc = oip_json.metadata_to_json(META)
    assert doc == {
        "name": "yolo",
        "versions": ["1", "2"],
        "platform": "python",
        "inputs": [
            {"name": "images", "datatype": "FP32", "shape": [1, 3, 640, 640]},
            {"name": "text", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [1, 25200, 85]}],
    }
    assert oip_json.metadata_from_json(json.loads(json.dumps(doc))) == META


def test_metadata_proto_round_trip_and_agrees_with_json() -> None:
    msg = pb.ModelMetadataResponse.FromString(oip_proto.metadata_to_proto(META).SerializeToString())
    assert oip_proto.metadata_from_proto(msg) == META
    as_json = MessageToDict(msg, preserving_proto_field_name=True)
    as_json["inputs"] = [dict(t, shape=[int(d) for d in t["shape"]]) for t in as_json["inputs"]]
    as_json["outputs"] = [dict(t, shape=[int(d) for d in t["shape"]]) for t in as_json["outputs"]]
    assert as_json == oip_json.metadata_to_json(META)


def test_metadata_from_a_server_that_omits_optional_fields() -> None:
    doc = {"name": "m", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2]}]}
    assert oip_json.metadata_from_json(doc) == ModelMetadata(
        "m", (), "", (TensorSpec("x", "FP32", (2,)),), ()
    )


def test_statistics_json_is_tritons_shape_as_always() -> None:
    doc = oip_json.statistics_to_json(STATS)
    assert doc["model_stats"][0] == STATS_JSON_0
    assert doc["model_stats"][1]["inference_stats"]["queue"] == {"count": 0, "ns": 0}
    assert oip_json.statistics_from_json(json.loads(json.dumps(doc))) == STATS


def test_statistics_proto_round_trip() -> None:
    wire = oip_proto.statistics_to_proto(STATS).SerializeToString()
    assert oip_proto.statistics_from_proto(pb.ModelStatisticsResponse.FromString(wire)) == STATS


def test_statistics_in_protobufs_json_mapping_read_the_same() -> None:
    """A server writing the proto's JSON mapping sends 64-bit counters as strings."""
    doc = MessageToDict(oip_proto.statistics_to_proto(STATS), preserving_proto_field_name=True)
    assert doc["model_stats"][0]["inference_stats"]["compute_infer"]["ns"] == str(BIG)
    assert oip_json.statistics_from_json(doc) == STATS


def test_statistics_from_triton_with_fields_we_do_not_keep() -> None:
    doc = {
        "model_stats": [
            {
                **STATS_JSON_0,
                "batch_stats": [{"batch_size": 1, "compute_infer": {"count": 5, "ns": 9}}],
                "memory_usage": [{"type": "CPU", "id": 0, "byte_size": 1}],
                "response_stats": {},
            }
        ]
    }
    assert oip_json.statistics_from_json(doc) == STATS[:1]
    assert oip_json.statistics_from_json({"model_stats": []}) == []


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "model metadata: expected a JSON object"),
        ({"name": 3}, "model metadata: field 'name' must be a string"),
        ({"inputs": {}}, "model metadata: field 'inputs' must be an array"),
        ({"versions": [1]}, "model metadata 'versions': expected an array of strings"),
        ({"inputs": [{"datatype": "FP32", "shape": [1]}]}, "missing required field 'name'"),
        ({"inputs": [{"name": "x", "datatype": "FP32"}]}, "'shape' must be an array of integers"),
        (
            {"outputs": [{"name": "x", "datatype": "FP32", "shape": [-2]}]},
            "model metadata outputs[0]: 'shape' must be an array of integers >= -1",
        ),
    ],
)
def test_malformed_metadata_is_the_servers_fault(doc: Any, message: str) -> None:
    with pytest.raises(BackendError, match=r"^malformed ") as info:
        oip_json.metadata_from_json(doc)
    assert message in info.value.message


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("x", "model statistics: expected a JSON object"),
        ({"model_stats": {}}, "field 'model_stats' must be an array"),
        ({"model_stats": [1]}, "model statistics [0]: expected a JSON object"),
        ({"model_stats": [{"inference_count": -1}]}, "'inference_count' must be a non-negative"),
        ({"model_stats": [{"inference_count": True}]}, "'inference_count' must be a non-negative"),
        ({"model_stats": [{"inference_stats": {"queue": {"ns": "x"}}}]}, "queue: 'ns' must be"),
    ],
)
def test_malformed_statistics_are_the_servers_fault(doc: Any, message: str) -> None:
    with pytest.raises(BackendError, match=r"^malformed ") as info:
        oip_json.statistics_from_json(doc)
    assert message in info.value.message
