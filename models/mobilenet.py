"""A MobileNet-shaped image classifier in plain numpy, with RANDOM weights.

The architecture, tensor shapes and compute are realistic (MobileNetV1 layout: a strided
3x3 stem, depthwise-separable blocks with ReLU6 down to 7x7, global average pooling, a
1000-way dense layer and softmax), but the weights are drawn from a fixed seed (He init)
instead of trained: outputs are deterministic and meaningless. It exists to put a
MobileNet-sized request (602 KB per image in, 4 KB out) and real CPU work behind every
backend; nothing should read its predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from infergw.models._conv import F32, conv2d, depthwise_conv3x3, he_normal, relu6_, softmax
from infergw.models.base import Model, TensorSpec

SEED = 224
IMAGE_SIZE = 224
CLASSES = 1000
STEM_CHANNELS = 32
# (output channels, stride) of each depthwise-separable block: 112 -> 56 -> 28 -> 14 -> 7.
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
CHUNK = 8  # images per forward pass: bounds the im2col / activation buffers


@dataclass(frozen=True)
class _Block:
    """Depthwise 3x3 (stride ``stride``) + ReLU6, then pointwise 1x1 + ReLU6."""

    dw_w: np.ndarray  # (3, 3, cin)
    dw_b: np.ndarray  # (cin,)
    pw_w: np.ndarray  # (1, 1, cin, cout)
    pw_b: np.ndarray  # (cout,)
    stride: int


class MobileNet(Model):
    """FP32 ``image`` [n, 224, 224, 3] (NHWC) -> FP32 ``probs`` [n, 1000]; random weights."""

    def __init__(self, name: str = "mobilenet", seed: int = SEED) -> None:
        self.name = name
        self.inputs = (TensorSpec("image", "FP32", (-1, IMAGE_SIZE, IMAGE_SIZE, 3)),)
        self.outputs = (TensorSpec("probs", "FP32", (-1, CLASSES)),)
        rng = np.random.default_rng(seed)
        # Biases start at zero, as after folding a freshly initialised batch norm.
        self.stem_w = he_normal(rng, (3, 3, 3, STEM_CHANNELS), fan_in=27)
        self.stem_b = np.zeros(STEM_CHANNELS, dtype=F32)
        self.blocks: list[_Block] = []
        cin = STEM_CHANNELS
        for cout, stride in BLOCKS:
            self.blocks.append(
                _Block(
                    dw_w=he_normal(rng, (3, 3, cin), fan_in=9),
                    dw_b=np.zeros(cin, dtype=F32),
                    pw_w=he_normal(rng, (1, 1, cin, cout), fan_in=cin),
                    pw_b=np.zeros(cout, dtype=F32),
                    stride=stride,
                )
            )
            cin = cout
        self.fc_w = he_normal(rng, (cin, CLASSES), fan_in=cin)
        self.fc_b = np.zeros(CLASSES, dtype=F32)

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = inputs["image"]
        probs = np.empty((images.shape[0], CLASSES), dtype=F32)
        for start in range(0, images.shape[0], CHUNK):
            probs[start : start + CHUNK] = self.forward(images[start : start + CHUNK])
        return {"probs": probs}

    def forward(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities of one batch of NHWC images (no chunking, no validation)."""
        x = relu6_(conv2d(images, self.stem_w, self.stem_b, stride=2))
        for block in self.blocks:
            x = relu6_(depthwise_conv3x3(x, block.dw_w, block.dw_b, stride=block.stride))
            x = relu6_(conv2d(x, block.pw_w, block.pw_b))
        pooled = x.mean(axis=(1, 2), dtype=F32)
        return softmax(pooled @ self.fc_w + self.fc_b)
