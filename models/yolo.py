"""A YOLOv5s-sized detector in plain numpy, with RANDOM weights.

The I/O and the decode are YOLOv5's (640x640 NCHW in, 25200 x 85 rows out: 3 anchors at
strides 8/16/32, xywh in input pixels, objectness and 80 class scores in [0, 1]). The
backbone is a small stack of 3x3 convs with SiLU (1.4 GMAC, about a sixth of YOLOv5s), and
the weights are drawn from a fixed seed (He init) instead of trained: outputs are
deterministic and meaningless. It exists to put a detector-sized payload (4.9 MB in, 8.6 MB
out) and real CPU work behind every backend; nothing should read its detections.
"""

from __future__ import annotations

import numpy as np

from infergw.models._conv import F32, conv2d, he_normal, sigmoid, silu_
from infergw.models.base import Model, TensorSpec

SEED = 640
IMAGE_SIZE = 640
CLASSES = 80
OUTPUTS = 5 + CLASSES  # x, y, w, h, objectness, class scores
# Backbone: 3x3 convs with SiLU. The stem halves 640 -> 320 -> 160; each stage then halves
# again (stride-2 conv) and refines (stride-1 conv), giving the P3, P4, P5 feature maps.
STEM = (16, 32)
STAGES = (64, 128, 256)
STRIDES = (8, 16, 32)  # of the stage outputs: 80x80, 40x40, 20x20 grids
# YOLOv5's default anchors (width, height in input pixels), three per scale.
ANCHORS = np.array(
    [
        [[10, 13], [16, 30], [33, 23]],
        [[30, 61], [62, 45], [59, 119]],
        [[116, 90], [156, 198], [373, 326]],
    ],
    dtype=F32,
)
_Conv = tuple[np.ndarray, np.ndarray]  # weights (k, k, cin, cout), bias (cout,)

ROWS = sum(len(a) * (IMAGE_SIZE // s) ** 2 for a, s in zip(ANCHORS, STRIDES, strict=True))


class Yolo(Model):
    """FP32 ``images`` [1, 3, 640, 640] (NCHW) -> FP32 ``output`` [1, 25200, 85]; random weights.

    Each output row is ``(x, y, w, h, objectness, class scores...)`` with the box centre and
    size in input pixels, in YOLOv5's order: scale, then anchor, then grid row, then column.
    """

    def __init__(self, name: str = "yolo", seed: int = SEED) -> None:
        self.name = name
        self.inputs = (TensorSpec("images", "FP32", (1, 3, IMAGE_SIZE, IMAGE_SIZE)),)
        self.outputs = (TensorSpec("output", "FP32", (1, ROWS, OUTPUTS)),)
        rng = np.random.default_rng(seed)

        def conv(k: int, cin: int, cout: int) -> _Conv:
            return he_normal(rng, (k, k, cin, cout), fan_in=k * k * cin), np.zeros(cout, F32)

        cin = 3
        self.stem: list[_Conv] = []
        for cout in STEM:
            self.stem.append(conv(3, cin, cout))
            cin = cout
        self.stages: list[tuple[_Conv, _Conv]] = []  # (stride-2 conv, stride-1 conv)
        for cout in STAGES:
            self.stages.append((conv(3, cin, cout), conv(3, cout, cout)))
            cin = cout
        self.heads = [conv(1, c, len(a) * OUTPUTS) for c, a in zip(STAGES, ANCHORS, strict=True)]

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"output": self.forward(inputs["images"])}

    def forward(self, images: np.ndarray) -> np.ndarray:
        """Decoded detections [1, 25200, 85] of one NCHW batch (no validation)."""
        x = np.ascontiguousarray(images.transpose(0, 2, 3, 1))  # NCHW -> NHWC
        for w, b in self.stem:
            x = silu_(conv2d(x, w, b, stride=2))
        features = []
        for down, refine in self.stages:
            x = silu_(conv2d(x, *down, stride=2))
            x = silu_(conv2d(x, *refine))
            features.append(x)
        out = np.empty((x.shape[0], ROWS, OUTPUTS), dtype=F32)
        start = 0
        scales = zip(features, self.heads, STRIDES, ANCHORS, strict=True)
        for feature, (w, b), stride, anchors in scales:
            raw = conv2d(feature, w, b)  # (n, ny, nx, anchors * 85)
            n, ny, nx, _ = raw.shape
            rows = len(anchors) * ny * nx
            dst = out[:, start : start + rows].reshape(n, len(anchors), ny, nx, OUTPUTS)
            start += rows
            sigmoid(raw.reshape(n, ny, nx, len(anchors), OUTPUTS).transpose(0, 3, 1, 2, 4), dst)
            _decode_boxes(dst, stride, anchors)
        return out


def _decode_boxes(y: np.ndarray, stride: int, anchors: np.ndarray) -> None:
    """YOLOv5's decode, in place on sigmoid outputs ``y`` (n, anchors, ny, nx, 85).

    xy = (2 s - 0.5 + grid) * stride, wh = (2 s)^2 * anchor: a centre may sit up to half a
    cell outside its own cell (so up to stride / 2 outside the image), a size up to 4x its
    anchor.
    """
    _, _, ny, nx, _ = y.shape
    gy, gx = np.meshgrid(np.arange(ny, dtype=F32), np.arange(nx, dtype=F32), indexing="ij")
    grid = np.stack((gx, gy), axis=-1) - F32(0.5)  # (ny, nx, 2), x first
    xy, wh = y[..., 0:2], y[..., 2:4]
    xy *= F32(2.0)
    xy += grid
    xy *= F32(stride)
    wh *= F32(2.0)
    wh *= wh
    wh *= anchors[:, None, None, :]
