"""Tiny, offline Hugging Face models and tokenizers for the parity and conversion tests.

Everything is built locally (the hub is unreachable): tokenizers are trained on a small built-in
corpus with the `tokenizers` library, models are tiny random transformers models whose every
parameter is re-randomized so that a port which drops a bias or a norm weight fails parity.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from mlx_models.models import MODULES, architecture, family, tasks_of

WORDPIECE_VOCAB_SIZE = 405
BPE_VOCAB_SIZE = 500  # 256 of these are the byte alphabet

# Four real sentences of clearly different lengths (each longer than the previous by >= 5 tokens).
SENTENCES = [
    "A great film.",
    "The acting was wooden, but the music kept me watching.",
    "I expected a simple comedy and instead found a patient, moving story about a family.",
    (
        "Although the first hour drags and the dialogue is clumsy, the final act is so beautifully "
        "shot that I was grateful I stayed."
    ),
]

_CORPUS = [
    "This movie was a complete waste of time and money.",
    "An absolute delight from start to finish, with a brilliant cast.",
    "The plot made no sense, and the ending felt rushed.",
    "I laughed, I cried, and I will watch it again next week.",
    "The director clearly loves these characters, and it shows in every scene.",
    "Terrible script, wooden acting, and a soundtrack that never stops.",
    "It is not a perfect film, but it is an honest and moving one.",
    "My kids loved the animation, though the jokes went over their heads.",
    "The special effects are impressive, yet the story is thin and predictable.",
    "She gives the performance of her career as a tired detective.",
    "Two hours of my life I will never get back.",
    "A slow, quiet drama that rewards patient viewers.",
    "The sequel is louder, longer, and somehow less interesting than the original.",
    "Beautifully photographed, with a haunting score and sharp dialogue.",
    "I cannot recommend this enough; go see it in a theater.",
    "The first half is charming, but the second half falls apart.",
    "Nobody in this film behaves like a real human being.",
    "What a surprise! I expected nothing and was completely won over.",
    "The romance feels forced, and the villain is a cartoon.",
    "A smart, funny, and surprisingly touching comedy about growing older.",
    "The camera work made me dizzy, and the editing was confusing.",
    "It's the best documentary I have seen this year.",
    "Fans of the book will be disappointed by the many changes.",
    "The actors seem bored, and honestly, so was I.",
    "Every frame is a painting; every line of dialogue matters.",
    "A forgettable thriller with one or two clever twists.",
    "The music, the costumes, and the sets are all wonderful.",
    "I walked out after forty minutes, which I almost never do.",
    "This is a family story told with warmth, humor, and great care.",
    "The horror scenes are effective, but the characters are paper thin.",
    "Despite a weak opening, the film builds to a powerful ending.",
    "The dialogue is clumsy and the pacing drags in the middle.",
    "Watching it with friends made the bad jokes almost bearable.",
    "A bold, strange, and unforgettable piece of science fiction.",
    "He plays the father with quiet dignity and real sadness.",
    "The 3D glasses gave me a headache; the movie did not help.",
    "Why would anyone make a remake of a classic this lazy?",
    "Simple, sweet, and exactly what I needed on a rainy Sunday.",
    "The twist was obvious from the first ten minutes.",
    "Grateful to have seen it; the final shot stayed with me for days.",
] + SENTENCES

# head -> HF class name suffix; llama has "lm" (causal) where the encoders have "mlm".
# Every family mlx_models has, with transformers' class for each head (our class names are HF's):
# a new family file is covered by the fixtures, and so by every test that loops over MODULES.
_HEADS = {t: {head: architecture(t, head) for head in tasks_of(t)} for t in MODULES}

_TINY = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}


def _wordpiece_vocab(
    normalizer: normalizers.Normalizer, pre_tokenizer: pre_tokenizers.PreTokenizer, specials: list[str]
) -> dict[str, int]:
    """Specials, then BPE pieces learned on the normalized corpus, each also as a "##" continuation."""
    # The tokenizers WordPieceTrainer breaks count ties in hash order (a different vocab in every
    # process); a BPE trainer given the whole alphabet up front is deterministic.
    bpe = Tokenizer(models.BPE())
    bpe.normalizer, bpe.pre_tokenizer = normalizer, pre_tokenizer
    alphabet = sorted({c for line in _CORPUS for c in normalizer.normalize_str(line) if not c.isspace()})
    n_pieces = (WORDPIECE_VOCAB_SIZE - len(specials)) // 2
    bpe.train_from_iterator(_CORPUS, trainers.BpeTrainer(vocab_size=n_pieces, initial_alphabet=alphabet))
    pieces = sorted(bpe.get_vocab(), key=bpe.token_to_id)
    return {t: i for i, t in enumerate(specials + pieces + ["##" + p for p in pieces])}


def make_tokenizer(kind: str, out_dir: Path) -> transformers.PreTrainedTokenizerFast:
    """Train a small tokenizer of the `kind` family on the built-in corpus and save it to `out_dir`."""
    if kind == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        normalizer = normalizers.BertNormalizer(lowercase=True)
        pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok = Tokenizer(
            models.WordPiece(_wordpiece_vocab(normalizer, pre_tokenizer, specials), unk_token="[UNK]")
        )
        tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
        tok.decoder = decoders.WordPiece(prefix="##")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
        )
        wrapped = transformers.BertTokenizerFast(tokenizer_object=tok)
    elif kind == "roberta" or family(kind).causal:
        # RoBERTa: <s>=0 <pad>=1 </s>=2 <unk>=3 (pad id 1 drives its positions). Llama: <unk>=0 <s>=1 </s>=2.
        roberta = kind == "roberta"  # the other kind: a decoder's (Llama's) tokenizer
        # <mask> strips the space before it, as in roberta-base ("Hello <mask>" -> "Hello", "<mask>").
        mask = AddedToken("<mask>", lstrip=True, special=True)
        specials = ["<s>", "<pad>", "</s>", "<unk>", mask] if roberta else ["<unk>", "<s>", "</s>"]
        tok = Tokenizer(models.BPE(unk_token="<unk>" if not roberta else None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=BPE_VOCAB_SIZE,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(_CORPUS, trainer)
        ids = {t: tok.token_to_id(t) for t in ("<s>", "</s>")}
        if roberta:
            tok.post_processor = processors.TemplateProcessing(
                single="<s> $A </s>",
                pair="<s> $A </s> </s> $B </s>",
                special_tokens=[("<s>", ids["<s>"]), ("</s>", ids["</s>"])],
            )
            wrapped = transformers.RobertaTokenizerFast(tokenizer_object=tok, mask_token=mask)
        else:
            # Like Llama: prepend bos, never append eos, and no pad token.
            tok.post_processor = processors.TemplateProcessing(
                single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", ids["<s>"])]
            )
            wrapped = transformers.PreTrainedTokenizerFast(
                tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
            )
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {sorted(_HEADS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(out_dir)
    return wrapped


def _check(model_type: str, head: str) -> None:
    if model_type not in _HEADS or head not in _HEADS[model_type]:
        raise ValueError(
            f"unsupported (model_type, head) = ({model_type!r}, {head!r}); "
            f"supported: {', '.join(f'{m}/{h}' for m in _HEADS for h in _HEADS[m])}"
        )


def _config(
    model_type: str, head: str, tok: transformers.PreTrainedTokenizerBase, overrides: dict
) -> transformers.PretrainedConfig:
    kw: dict = dict(_TINY, vocab_size=len(tok))
    if model_type == "bert":
        kw.update(type_vocab_size=2, max_position_embeddings=64, pad_token_id=tok.pad_token_id)
        cls = transformers.BertConfig
    elif model_type == "roberta":
        # The real RoBERTa quirks: one token type, eps 1e-5, positions offset by pad_token_id + 1.
        kw.update(
            type_vocab_size=1,
            layer_norm_eps=1e-5,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            max_position_embeddings=64 + 2,
        )
        cls = transformers.RobertaConfig
    else:
        kw.update(
            num_key_value_heads=2,
            rope_theta=10000.0,
            rms_norm_eps=1e-5,
            max_position_embeddings=128,
            tie_word_embeddings=False,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
        if head == "classify":
            # HF pools at the last non-pad token and needs a pad id; our port pools by the mask instead.
            kw["pad_token_id"] = tok.eos_token_id
        cls = functools.partial(transformers.AutoConfig.for_model, model_type)  # a decoder: Llama's sizes
    if head == "classify":
        kw["num_labels"] = 3
    # eager: the plain softmax(QK^T + mask) V reference; it is not saved in config.json.
    kw["attn_implementation"] = "eager"
    kw.update(overrides)
    return cls(**kw)


@torch.no_grad()
def _rerandomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    # named_parameters() yields a tied tensor once, and copy_ keeps the sharing intact.
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        if name.endswith("bias"):
            p.copy_(0.1 * noise)
        elif p.ndim == 1:  # LayerNorm / RMSNorm weights
            p.copy_(1.0 + 0.1 * noise)
        else:
            p.copy_(0.02 * noise)


def build_hf_model(
    model_type: str,
    head: str,
    tokenizer: transformers.PreTrainedTokenizerBase,
    *,
    seed: int = 0,
    **config_overrides,
) -> transformers.PreTrainedModel:
    """The in-memory model `make_hf_model` saves: tiny config, every parameter re-randomized, eval mode."""
    _check(model_type, head)
    config = _config(model_type, head, tokenizer, config_overrides)
    torch.manual_seed(seed)
    model = getattr(transformers, _HEADS[model_type][head])(config)
    _rerandomize(model, torch.Generator().manual_seed(seed))
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def make_hf_model(out_dir: Path, model_type: str, head: str, *, seed: int = 0, **config_overrides) -> Path:
    """Build a tiny random HF model plus its tokenizer and `save_pretrained` both to `out_dir`."""
    _check(model_type, head)  # before anything is written
    out_dir = Path(out_dir)
    tokenizer = make_tokenizer(model_type, out_dir)
    model = build_hf_model(model_type, head, tokenizer, seed=seed, **config_overrides)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def padded_batch(
    tokenizer: transformers.PreTrainedTokenizerBase,
    texts: list[str],
    padding_side: str = "right",
    pad_id: int | None = None,
) -> dict[str, np.ndarray]:
    """Tokenize `texts` (with special tokens) and pad them: int32 `input_ids` and `attention_mask`, (B, L)."""
    from mlx_models.batching import collate, pad_id_for

    seqs = tokenizer(texts)["input_ids"]
    pad = pad_id if pad_id is not None else pad_id_for(tokenizer)
    input_ids, attention_mask = collate(seqs, pad, padding_side)
    return {"input_ids": input_ids, "attention_mask": attention_mask}
