"""Word aggregation through the tokenizer's offsets: WordPiece (tiny BERT, the real MiniLM),
byte-level BPE (tiny RoBERTa, the real SmolLM2) and SentencePiece (a Metaspace BPE trained here)
put their tokens on the same words of the text."""

import numpy as np
import pytest
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from hf_fixtures import _CORPUS, make_tokenizer
from mlx_models import load_tokenizer
from mlx_models.errors import ConfigError
from mlx_models.explain.words import NO_WORD, keep_tokens, seen_words, split_words, tokenize, word_scores

TEXTS = [
    "Unwatchable, isn't it?  The acting was wooden...",
    "A great film! I'd watch it again (twice).",
    "Naïve dialogue; superb cinematography — 10/10.",
]


def sentencepiece(tmp_path):
    """A SentencePiece-style tokenizer (Metaspace "▁", as Llama-2's), built offline."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = (
        normalizers.NFKC(),
        pre_tokenizers.Metaspace(),
        decoders.Metaspace(),
    )
    tok.train_from_iterator(
        _CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"])
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory, minilm_hf, smollm2):
    root = tmp_path_factory.mktemp("tokenizers")
    return {
        "wordpiece (tiny BERT)": make_tokenizer("bert", root / "bert"),
        "wordpiece (MiniLM)": transformers.AutoTokenizer.from_pretrained(str(minilm_hf)),
        "byte-level BPE (tiny RoBERTa)": make_tokenizer("roberta", root / "roberta"),
        "byte-level BPE (SmolLM2)": load_tokenizer(smollm2),
        "sentencepiece (Metaspace BPE)": sentencepiece(root),
    }


FAMILIES = [
    "wordpiece (tiny BERT)",
    "wordpiece (MiniLM)",
    "byte-level BPE (tiny RoBERTa)",
    "byte-level BPE (SmolLM2)",
    "sentencepiece (Metaspace BPE)",
]


def test_split_words():
    text = TEXTS[0]
    assert [text[s:e] for s, e in split_words(text)] == [
        "Unwatchable", ",", "isn't", "it", "?", "The", "acting", "was", "wooden", "...",
    ]  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_every_token_lands_on_the_word_that_holds_it(tokenizers, family):
    tok = tokenizers[family]
    for text, t in zip(TEXTS, tokenize(tok, TEXTS, max_length=512), strict=True):
        spans = split_words(text)
        enc = tok(text, return_offsets_mapping=True)
        assert t.ids == enc["input_ids"]
        assert (t.token_word[t.special] == NO_WORD).all()  # SmolLM2 adds no special token at all
        for (start, end), w in zip(enc["offset_mapping"], t.token_word, strict=True):
            piece = text[start:end]
            if w == NO_WORD:
                assert not piece.strip() or start == end, (family, piece)  # only specials and spaces
                continue
            first = start + len(piece) - len(piece.lstrip())  # "Ġgreat", "▁great" carry the space
            if piece.strip():
                assert spans[w][0] <= first < spans[w][1], (family, piece, text[slice(*spans[w])])
            else:  # a lone "Ġ" or "▁" (or its trimmed, empty span): the space of the next word
                assert spans[w][0] >= end and not text[end : spans[w][0]].strip(), (family, piece)
        assert seen_words(t.token_word, len(spans)).all(), family  # every word got a token


@pytest.mark.parametrize("family", FAMILIES)
def test_word_scores_sum_their_tokens(tokenizers, family):
    t = tokenize(tokenizers[family], TEXTS[:1], max_length=512)[0]
    scores = np.random.default_rng(0).normal(size=len(t.ids))
    words = word_scores(scores, t.token_word, len(split_words(TEXTS[0])))
    on_words = t.token_word != NO_WORD
    assert words.sum() == pytest.approx(scores[on_words].sum())
    first = t.token_word == 0  # "Unwatchable": several sub-tokens in every family
    assert first.sum() >= 2, (family, t.tokens)
    assert words[0] == pytest.approx(scores[first].sum())


def test_same_words_for_every_family(tokenizers):
    """What makes models comparable: one word list, and each family reaches every word."""
    for text in TEXTS:
        n = len(split_words(text))
        for family in FAMILIES:
            t = tokenize(tokenizers[family], [text], max_length=512)[0]
            assert set(t.token_word[t.token_word != NO_WORD]) == set(range(n)), family


def test_truncated_words_are_unseen_and_nan(tokenizers):
    tok = tokenizers["wordpiece (tiny BERT)"]
    t = tokenize(tok, TEXTS[:1], max_length=6)[0]  # [CLS] + 4 tokens + [SEP]
    n = len(split_words(TEXTS[0]))
    seen = seen_words(t.token_word, n)
    assert len(t.ids) == 6 and seen[0] and not seen[-1]
    words = word_scores(np.ones(6), t.token_word, n)
    assert np.isnan(words[~seen]).all() and not np.isnan(words[seen]).any()


def test_keep_tokens_drops_whole_words_and_keeps_specials(tokenizers):
    tok = tokenizers["byte-level BPE (tiny RoBERTa)"]
    t = tokenize(tok, TEXTS[:1], max_length=512)[0]
    n = len(split_words(TEXTS[0]))
    keep = np.ones(n, dtype=bool)
    keep[0] = False  # drop "Unwatchable"
    kept = keep_tokens(t.ids, t.token_word, keep)
    assert kept[0] == tok.bos_token_id and kept[-1] == tok.eos_token_id
    assert len(kept) == len(t.ids) - int((t.token_word == 0).sum())
    # Nothing kept: only the special tokens remain (the lone "Ġ" of the double space went with "The").
    assert keep_tokens(t.ids, t.token_word, np.zeros(n, dtype=bool)) == [tok.bos_token_id, tok.eos_token_id]
    assert (t.token_word != NO_WORD).sum() == len(t.ids) - 2


def test_slow_tokenizer_is_refused():
    class Slow:
        is_fast = False

    with pytest.raises(ConfigError, match="slow tokenizer"):
        tokenize(Slow(), ["text"], 8)
