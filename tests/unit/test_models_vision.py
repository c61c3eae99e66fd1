"""The random-weight vision models (mobilenet, yolo) and their numpy conv helpers.

Their weights are random, so there are no goldens: these tests pin the I/O contract,
determinism, the softmax / YOLOv5-decode invariants, and the conv helpers against a
naive reference.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

from infergw.models import MODELS, Model, ModelInputError, load_model
from infergw.models import mobilenet as mobilenet_module
from infergw.models._conv import conv2d, depthwise_conv3x3, sigmoid
from infergw.models.mobilenet import MobileNet
from infergw.models.yolo import ANCHORS, STRIDES, Yolo, _decode_boxes

F32 = np.float32


@pytest.fixture(scope="module")
def mobilenet() -> Model:
    return load_model("mobilenet")


@pytest.fixture(scope="module")
def yolo() -> Model:
    return load_model("yolo")


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 224, 224, 3), dtype=F32)


@pytest.fixture(scope="module")
def yolo_image() -> np.ndarray:
    return np.random.default_rng(0).random((1, 3, 640, 640), dtype=F32)


@pytest.fixture(scope="module")
def yolo_output(yolo: Model, yolo_image: np.ndarray) -> np.ndarray:
    return yolo.infer({"images": yolo_image})["output"]


# -- registry and declared I/O -------------------------------------------------------


def test_registered_with_declared_io(mobilenet: Model, yolo: Model) -> None:
    assert {"mobilenet", "yolo"} <= set(MODELS)
    assert mobilenet.metadata()["inputs"] == [
        {"name": "image", "datatype": "FP32", "shape": [-1, 224, 224, 3]}
    ]
    assert mobilenet.metadata()["outputs"] == [
        {"name": "probs", "datatype": "FP32", "shape": [-1, 1000]}
    ]
    assert yolo.metadata()["inputs"] == [
        {"name": "images", "datatype": "FP32", "shape": [1, 3, 640, 640]}
    ]
    assert yolo.metadata()["outputs"] == [
        {"name": "output", "datatype": "FP32", "shape": [1, 25200, 85]}
    ]


def test_loading_is_fast_and_offline() -> None:
    start = time.perf_counter()
    MobileNet()
    Yolo()
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    ("model", "inputs", "message"),
    [
        ("mobilenet", {"image": np.zeros((1, 3, 224, 224), F32)}, r"\[-1, 224, 224, 3\]"),
        ("mobilenet", {"image": np.zeros((224, 224, 3), F32)}, r"\[-1, 224, 224, 3\]"),
        ("mobilenet", {"image": np.zeros((1, 224, 224, 3), np.float64)}, "expected datatype FP32"),
        ("mobilenet", {"images": np.zeros((1, 224, 224, 3), F32)}, r"unexpected input\(s\)"),
        ("yolo", {"images": np.zeros((1, 640, 640, 3), F32)}, r"\[1, 3, 640, 640\]"),
        ("yolo", {"images": np.zeros((2, 3, 640, 640), F32)}, r"got \[2, 3, 640, 640\]"),
        ("yolo", {"images": np.zeros((1, 3, 320, 320), F32)}, r"\[1, 3, 640, 640\]"),
        ("yolo", {"images": np.zeros((1, 3, 640, 640), np.uint8)}, "expected datatype FP32"),
        ("yolo", {}, "missing input 'images'"),
    ],
)
def test_wrong_inputs_are_model_input_errors(
    model: str, inputs: dict[str, np.ndarray], message: str, mobilenet: Model, yolo: Model
) -> None:
    with pytest.raises(ModelInputError, match=message):
        {"mobilenet": mobilenet, "yolo": yolo}[model].infer(inputs)


# -- mobilenet -----------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 3])
def test_mobilenet_probs_shape_and_rows_sum_to_one(mobilenet: Model, n: int) -> None:
    probs = mobilenet.infer({"image": images(n)})["probs"]
    assert probs.shape == (n, 1000) and probs.dtype == np.float32
    assert np.all((probs >= 0) & (probs <= 1))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_mobilenet_is_deterministic_and_seeded() -> None:
    batch = images(2)
    first = MobileNet().infer({"image": batch})["probs"]
    np.testing.assert_array_equal(MobileNet().infer({"image": batch})["probs"], first)
    assert not np.allclose(MobileNet(seed=1).infer({"image": batch})["probs"], first)


def test_mobilenet_rows_are_independent_of_batching(
    mobilenet: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = images(3, seed=1)
    singles = np.concatenate(
        [mobilenet.infer({"image": batch[i : i + 1]})["probs"] for i in range(3)]
    )
    monkeypatch.setattr(mobilenet_module, "CHUNK", 2)  # a full and a partial chunk
    np.testing.assert_allclose(mobilenet.infer({"image": batch})["probs"], singles, atol=1e-7)
    assert not np.allclose(singles[0], singles[1])  # different images, different outputs


# -- yolo ----------------------------------------------------------------------------


def test_yolo_output_shape_and_score_ranges(yolo_output: np.ndarray) -> None:
    assert yolo_output.shape == (1, 25200, 85) and yolo_output.dtype == np.float32
    assert np.all(np.isfinite(yolo_output))
    scores = yolo_output[..., 4:]  # objectness and class scores are sigmoids
    assert np.all((scores >= 0) & (scores <= 1))
    assert np.all(yolo_output[..., 2:4] >= 0)  # w, h


def test_yolo_boxes_decode_within_their_cell_and_anchor(yolo_output: np.ndarray) -> None:
    """Rows run scale, anchor, grid row, column; each centre lies within 1/2 cell of its cell."""
    start = 0
    for stride, anchors in zip(STRIDES, ANCHORS, strict=True):
        size = 640 // stride
        rows = yolo_output[0, start : start + 3 * size * size].reshape(3, size, size, 85)
        start += 3 * size * size
        gy, gx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
        for cell, centre in ((gx, rows[..., 0]), (gy, rows[..., 1])):
            assert np.all(centre >= (cell - 0.5) * stride - 1e-3)
            assert np.all(centre <= (cell + 1.5) * stride + 1e-3)
        wh = rows[..., 2:4]
        assert np.all((wh >= 0) & (wh <= 4 * anchors[:, None, None, :] + 1e-3))
    assert start == 25200


def test_yolo_decode_matches_yolov5_formula() -> None:
    """sigmoid 0.5 everywhere puts each box at its cell centre with exactly its anchor's size."""
    y = np.full((1, 3, 2, 4, 85), 0.5, dtype=F32)
    _decode_boxes(y, 16, ANCHORS[1])
    np.testing.assert_array_equal(y[0, 2, 1, 3, :4], [(3 + 0.5) * 16, (1 + 0.5) * 16, 59, 119])
    np.testing.assert_array_equal(y[0, 0, 0, 0, :4], [8, 8, 30, 61])
    np.testing.assert_array_equal(y[..., 4:], 0.5)


def test_yolo_is_deterministic_and_seeded(yolo_image: np.ndarray, yolo_output: np.ndarray) -> None:
    np.testing.assert_array_equal(Yolo().infer({"images": yolo_image})["output"], yolo_output)
    other = Yolo(seed=1).infer({"images": yolo_image})["output"]
    assert not np.allclose(other[..., 4:], yolo_output[..., 4:])


# -- conv helpers --------------------------------------------------------------------


def naive_conv(x: np.ndarray, w: np.ndarray, stride: int, depthwise: bool) -> np.ndarray:
    """Direct NHWC convolution with symmetric k // 2 zero padding (float64 reference)."""
    k = w.shape[0]
    p = k // 2
    xp = np.pad(x.astype(np.float64), ((0, 0), (p, p), (p, p), (0, 0)))
    n, h, wd, _ = x.shape
    ho, wo = (h + 2 * p - k) // stride + 1, (wd + 2 * p - k) // stride + 1
    out = np.zeros((n, ho, wo, w.shape[-1]))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, i * stride : i * stride + k, j * stride : j * stride + k]
            if depthwise:
                out[:, i, j] = np.einsum("nyxc,yxc->nc", patch, w)
            else:
                out[:, i, j] = np.einsum("nyxc,yxcd->nd", patch, w)
    return out


@pytest.mark.parametrize(("k", "stride", "size"), [(3, 1, 5), (3, 2, 6), (3, 2, 7), (1, 1, 4)])
def test_conv2d_matches_naive_reference(k: int, stride: int, size: int) -> None:
    rng = np.random.default_rng(k + stride + size)
    x = rng.standard_normal((2, size, size, 3), dtype=F32)
    w = rng.standard_normal((k, k, 3, 4), dtype=F32)
    b = rng.standard_normal(4, dtype=F32)
    got = conv2d(x, w, b, stride=stride)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, naive_conv(x, w, stride, depthwise=False) + b, atol=1e-5)


@pytest.mark.parametrize(("stride", "size"), [(1, 5), (2, 6), (2, 7)])
def test_depthwise_conv3x3_matches_naive_reference(stride: int, size: int) -> None:
    rng = np.random.default_rng(stride + size)
    x = rng.standard_normal((2, size, size, 4), dtype=F32)
    w = rng.standard_normal((3, 3, 4), dtype=F32)
    b = rng.standard_normal(4, dtype=F32)
    got = depthwise_conv3x3(x, w, b, stride=stride)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, naive_conv(x, w, stride, depthwise=True) + b, atol=1e-5)


def test_sigmoid_saturates_without_overflow_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = sigmoid(np.array([-1000.0, -1.0, 0.0, 1.0, 1000.0], dtype=F32))
    np.testing.assert_allclose(
        got, [0.0, 1 / (1 + np.e), 0.5, 1 / (1 + np.exp(-1)), 1.0], rtol=1e-6
    )
