"""A BERT text encoder in plain PyTorch, loaded from a Hugging Face model directory.

Why not ``transformers``: importing it and its BERT module costs about 8 s of wall time
per process (``import transformers`` 1.5 s, ``modeling_bert`` 3.8 s, scanning its import
structure 2.2 s), which dominated the CLI's start-up and the test suite's many
subprocesses. The default encoder (all-MiniLM-L6-v2) is a 6-layer BERT: the forward pass
is a few dozen lines, the weights are one ``model.safetensors`` and the tokenizer is one
``tokenizer.json`` read by the ``tokenizers`` package (fast to import).

The states must be bit-identical to ``transformers.AutoModel`` (the golden tests hash
generated videos, which depend on them), so the forward pass performs the same torch ops
in the same order as transformers' BERT with its default ``sdpa`` attention: embeddings
summed as (word + token type) + position, a boolean padding mask of shape (B, 1, L, L)
given to ``scaled_dot_product_attention`` only when some token is padding (``None``
otherwise), the scale ``head_dim ** -0.5`` passed explicitly, and dropout left out (the
encoder is frozen, in eval mode). Under autocast the same ops see the same dtypes.

Only what the default path needs is supported (an encoder-only BERT with absolute
positions and a GELU or ReLU activation); ``supports(config)`` says so, and the caller
uses transformers for anything else.
"""

from __future__ import annotations

import bisect
import json
import re
from pathlib import Path

import torch
from torch import nn

from tinysora.errors import UserError


class TextEncoderError(UserError, RuntimeError):
    """The text encoder cannot be loaded; the message says what to install or pass."""


# transformers' BertConfig defaults, for keys a config.json leaves out
CONFIG_DEFAULTS = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "position_embedding_type": "absolute",
    "is_decoder": False,
    "add_cross_attention": False,
    "chunk_size_feed_forward": 0,
}
ACTIVATIONS = {"gelu": nn.functional.gelu, "relu": nn.functional.relu}  # gelu: exact (erf)


def bert_config(config: dict) -> dict:
    """config.json's dict with transformers' BertConfig defaults filled in."""
    return {**CONFIG_DEFAULTS, **config}


def supports(config: dict) -> bool:
    """True when ``config`` (config.json's dict) is a BERT this module computes exactly as
    transformers does: encoder only, absolute positions, GELU or ReLU, no FFN chunking."""
    c = bert_config(config)
    return (
        c.get("model_type") == "bert"
        and c["position_embedding_type"] == "absolute"
        and c["hidden_act"] in ACTIVATIONS
        and not c["is_decoder"]
        and not c["add_cross_attention"]
        and not c["chunk_size_feed_forward"]
        and c["hidden_size"] % c["num_attention_heads"] == 0
    )


class Embeddings(nn.Module):
    """Word + token type (all type 0) + absolute position embeddings, then LayerNorm."""

    def __init__(self, c: dict):
        super().__init__()
        self.word_embeddings = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], c["hidden_size"])
        self.token_type_embeddings = nn.Embedding(c["type_vocab_size"], c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        batch, length = input_ids.shape
        positions = torch.arange(length, device=input_ids.device)[None]
        token_types = torch.zeros(batch, length, dtype=torch.long, device=input_ids.device)
        # this summation order is transformers' (float addition is not associative)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_types)
        x = x + self.position_embeddings(positions)
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``."""

    def __init__(self, c: dict):
        super().__init__()
        dim = c["hidden_size"]
        self.heads = c["num_attention_heads"]
        self.head_dim = dim // self.heads
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = (
            proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
            for proj in (self.query, self.key, self.value)
        )
        out = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=0.0, scale=self.head_dim**-0.5, is_causal=False
        )
        return out.transpose(1, 2).reshape(batch, length, -1)


class DenseResidualNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)``: the output of attention and of the FFN."""

    def __init__(self, d_in: int, d_out: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    """Self-attention followed by its output projection, residual and LayerNorm."""

    def __init__(self, c: dict):
        super().__init__()
        self.self = SelfAttention(c)
        self.output = DenseResidualNorm(c["hidden_size"], c["hidden_size"], c["layer_norm_eps"])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class Intermediate(nn.Module):
    """The FFN's expansion: dense then the activation."""

    def __init__(self, c: dict):
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["intermediate_size"])
        self.act = ACTIVATIONS[c["hidden_act"]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class Layer(nn.Module):
    """One post-norm transformer layer: attention block, then FFN block."""

    def __init__(self, c: dict):
        super().__init__()
        self.attention = Attention(c)
        self.intermediate = Intermediate(c)
        self.output = DenseResidualNorm(
            c["intermediate_size"], c["hidden_size"], c["layer_norm_eps"]
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    """The stack of layers (a module of its own so parameter names match the files)."""

    def __init__(self, c: dict):
        super().__init__()
        self.layer = nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))


class BertEncoderModel(nn.Module):
    """``model(input_ids, attention_mask) -> last hidden states (B, L, D)``.

    Parameter names are those of transformers' ``BertModel`` (without the pooler), so a
    checkpoint's state dict loads as it is.
    """

    def __init__(self, config: dict):
        super().__init__()
        c = bert_config(config)
        self.embeddings = Embeddings(c)
        self.encoder = Encoder(c)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.embeddings(input_ids)
        mask = padding_mask(attention_mask, x.shape[1])
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x

    @classmethod
    def from_directory(cls, path: str | Path) -> BertEncoderModel:
        """The model of a Hugging Face BERT directory (config.json + model.safetensors), in
        eval mode and frozen. A checkpoint lacking a weight, or with a weight of the wrong
        shape, is a one-line ``TextEncoderError``."""
        from safetensors.torch import load_file

        path = Path(path)
        config = json.loads((path / "config.json").read_text())
        # built on the CPU and randomly initialized (0.25 s) before the file's weights replace
        # the init: building on the meta device would import torch._dynamo (2.7 s)
        model = cls(config)
        try:
            weights = load_file(path / "model.safetensors")
        except (OSError, RuntimeError) as e:  # missing, or not a safetensors file
            raise TextEncoderError(f"cannot load text encoder from '{path}': {e}") from None
        weights = {k.removeprefix("bert."): v for k, v in weights.items()}
        expected = model.state_dict()
        missing = sorted(set(expected) - set(weights))
        if missing:
            raise TextEncoderError(
                f"cannot load text encoder from '{path}': model.safetensors lacks {len(missing)} "
                f"BERT weight(s), e.g. '{missing[0]}'"
            )
        for name, param in expected.items():
            if weights[name].shape != param.shape:
                raise TextEncoderError(
                    f"cannot load text encoder from '{path}': weight '{name}' has shape "
                    f"{tuple(weights[name].shape)}, config.json says {tuple(param.shape)}"
                )
        # the pooler and the stored position_ids buffer are not used
        model.load_state_dict({k: weights[k] for k in expected}, assign=True)
        return model.eval().requires_grad_(False)


def padding_mask(attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """The attention mask transformers gives SDPA: ``None`` when no token is padding, else
    a contiguous bool (B, 1, L, L), True where a query may attend to a key."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    keep = attention_mask.bool()[:, None, None, :]
    return keep.expand(-1, 1, length, -1).contiguous()


def _special_token(path: Path, name: str) -> str | None:
    """A special token's text from tokenizer_config.json or special_tokens_map.json."""
    for file in ("tokenizer_config.json", "special_tokens_map.json"):
        if (path / file).is_file():
            token = json.loads((path / file).read_text()).get(name)
            if isinstance(token, dict):  # {"content": "[PAD]", ...}
                token = token.get("content")
            if token:
                return token
    return None


class BertTokenizer:
    """``tokenizer.json`` through the ``tokenizers`` package, called like transformers' tokenizer
    (the subset tinysora uses): ``tokenizer(texts, padding="longest", truncation=True,
    max_length=n, return_tensors="pt")`` -> {"input_ids", "attention_mask"}.

    Normalization (lowercasing, accents), WordPiece and the [CLS] ... [SEP] template all come
    from tokenizer.json; the truncation and padding it stores are replaced per call, as
    transformers does. A single string gives lists of ids, not a batch.
    """

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        path = Path(path)
        try:
            self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a bare Exception on a bad file
            raise TextEncoderError(f"cannot load text encoder from '{path}': {e}") from None
        self.pad_token = _special_token(path, "pad_token") or "[PAD]"
        self.pad_token_id = self._tokenizer.token_to_id(self.pad_token)
        if self.pad_token_id is None:
            raise TextEncoderError(
                f"cannot load text encoder from '{path}': pad token {self.pad_token!r} "
                "is not in tokenizer.json"
            )
        config = path / "tokenizer_config.json"
        config = json.loads(config.read_text()) if config.is_file() else {}
        self.model_max_length = config.get("model_max_length")

    def __call__(
        self,
        text: str | list[str],
        padding: bool | str = False,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
    ) -> dict:
        max_length = max_length or self.model_max_length
        if truncation and max_length:
            self._tokenizer.enable_truncation(max_length)
        else:
            self._tokenizer.no_truncation()
        if padding in (True, "longest"):
            self._tokenizer.enable_padding(pad_id=self.pad_token_id, pad_token=self.pad_token)
        elif padding is False:
            self._tokenizer.no_padding()
        else:
            raise ValueError(f"padding={padding!r}: BertTokenizer pads to the longest or not")
        single = isinstance(text, str)
        encodings = self._tokenizer.encode_batch([text] if single else text)
        tokens = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
        }
        if return_tensors == "pt":
            return {k: torch.tensor(v, dtype=torch.long) for k, v in tokens.items()}
        if return_tensors is not None:
            raise ValueError(f"return_tensors={return_tensors!r}: BertTokenizer returns 'pt'")
        return {k: v[0] for k, v in tokens.items()} if single else tokens

    def word_ids(self, text: str, max_length: int) -> list[int | None]:
        """For each token of ``text`` ([CLS] ... [SEP], truncated to ``max_length``, no
        padding): the index of the whitespace-separated word it comes from (None for the
        special tokens)."""
        self._tokenizer.enable_truncation(max_length)
        self._tokenizer.no_padding()
        encoding = self._tokenizer.encode(text)
        starts = [m.start() for m in re.finditer(r"\S+", text)]
        return [
            None if special else bisect.bisect_right(starts, start) - 1
            for (start, _), special in zip(
                encoding.offsets, encoding.special_tokens_mask, strict=True
            )
        ]
