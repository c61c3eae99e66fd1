"""Convolution building blocks for the vision example models: NHWC, float32, numpy only.

Spatial convolutions become one matmul over an im2col matrix built from ``k*k`` strided
slices (one copy, no Python loop over pixels); depthwise convolutions accumulate their
nine taps as whole-tensor multiply-adds. Padding is symmetric ``k // 2`` ("same" for
stride 1, exact halving of even sizes for stride 2), as in torchvision / YOLOv5.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def he_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """He (Kaiming) normal init: N(0, 2 / fan_in), float32."""
    return (rng.standard_normal(shape, dtype=F32) * F32(np.sqrt(2.0 / fan_in))).astype(F32)


def _padded(x: np.ndarray, pad: int) -> np.ndarray:
    if pad == 0:
        return x
    n, h, w, c = x.shape
    out = np.zeros((n, h + 2 * pad, w + 2 * pad, c), dtype=x.dtype)
    out[:, pad : pad + h, pad : pad + w] = x
    return out


def _out_size(size: int, k: int, stride: int) -> int:
    return (size + 2 * (k // 2) - k) // stride + 1


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 1) -> np.ndarray:
    """Dense conv: ``x`` (n, h, w, cin), ``w`` (k, k, cin, cout), ``b`` (cout,) -> NHWC."""
    k, _, cin, cout = w.shape
    n, h, wd, _ = x.shape
    ho, wo = _out_size(h, k, stride), _out_size(wd, k, stride)
    if k == 1 and stride == 1:
        cols = x.reshape(-1, cin)
    else:
        xp = _padded(x, k // 2)
        cols = np.empty((n, ho, wo, k * k * cin), dtype=F32)
        for i, (dy, dx) in enumerate((dy, dx) for dy in range(k) for dx in range(k)):
            tap = xp[:, dy : dy + stride * ho : stride, dx : dx + stride * wo : stride]
            cols[..., i * cin : (i + 1) * cin] = tap
        cols = cols.reshape(-1, k * k * cin)
    out = cols @ w.reshape(k * k * cin, cout)
    out += b
    return out.reshape(n, ho, wo, cout)


def depthwise_conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 1) -> np.ndarray:
    """Depthwise 3x3 conv: ``x`` (n, h, w, c), ``w`` (3, 3, c), ``b`` (c,) -> NHWC."""
    n, h, wd, c = x.shape
    ho, wo = _out_size(h, 3, stride), _out_size(wd, 3, stride)
    xp = _padded(x, 1)
    out = np.empty((n, ho, wo, c), dtype=F32)
    out[...] = b
    tmp = np.empty_like(out)
    for dy in range(3):
        for dx in range(3):
            tap = xp[:, dy : dy + stride * ho : stride, dx : dx + stride * wo : stride]
            np.multiply(tap, w[dy, dx], out=tmp)
            out += tmp
    return out


def relu6_(x: np.ndarray) -> np.ndarray:
    """min(max(x, 0), 6), in place."""
    np.maximum(x, F32(0.0), out=x)
    return np.minimum(x, F32(6.0), out=x)


def sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """1 / (1 + exp(-x)) in float32 (``out`` may alias ``x``); saturates cleanly to 0 or 1."""
    out = np.negative(x, out=out)
    with np.errstate(over="ignore"):  # exp(large) = inf -> 1 / inf = 0, the right limit
        np.exp(out, out=out)
    out += F32(1.0)
    return np.reciprocal(out, out=out)


def silu_(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x) (YOLOv5's activation), in place."""
    x *= sigmoid(x)
    return x


def softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
