"""BERT (HF ``model_type: bert``). Module names equal the HF weight keys."""

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..errors import DataError
from . import cpu_ops, norms
from .base import BaseModelArgs, Family, TaskModel, activation, padding_mask


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    classifier_dropout: float | None = None
    tie_word_embeddings: bool = True
    num_labels: int = 2
    initializer_range: float = 0.02
    is_decoder: bool = False

    @property
    def max_positions(self) -> int:
        """The longest input, in tokens: the position table's size."""
        return self.max_position_embeddings

    def checks(self) -> list[tuple[bool, str]]:
        D, heads, positions = self.hidden_size, self.num_attention_heads, self.position_embedding_type
        return super().checks() + [
            (positions != "absolute", f"position_embedding_type {positions!r} (only 'absolute')"),
            (D % heads != 0, f"hidden_size {D} not divisible by {heads} heads"),
            (self.is_decoder, "is_decoder=true (only the bidirectional encoder is supported)"),
        ]


class BertEmbeddings(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.word_embeddings = nn.Embedding(args.vocab_size, args.hidden_size)
        self.position_embeddings = nn.Embedding(args.max_position_embeddings, args.hidden_size)
        self.token_type_embeddings = nn.Embedding(args.type_vocab_size, args.hidden_size)
        self.LayerNorm = norms.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.dropout = nn.Dropout(args.hidden_dropout_prob)
        self.max_positions = args.max_positions

    def position_ids(self, input_ids: mx.array) -> mx.array:
        return mx.arange(input_ids.shape[1])[None]

    def __call__(self, input_ids: mx.array, token_type_ids=None, inputs_embeds=None) -> mx.array:
        # inputs_embeds (B, L, D) replaces the word-embedding lookup, as in transformers; positions
        # and token types still come from input_ids (attributions move the word embeddings only).
        if input_ids.shape[1] > self.max_positions:  # MLX would read past the position table
            raise DataError(
                f"an input of {input_ids.shape[1]} tokens is longer than the model's "
                f"{self.max_positions} positions; truncate it (max_length={self.max_positions})"
            )
        if token_type_ids is None:
            token_type_ids = mx.zeros_like(input_ids)
        h = (
            (self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds)
            + self.position_embeddings(self.position_ids(input_ids))
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.LayerNorm(h))


class BertSelfAttention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        D = args.hidden_size
        self.n_heads = args.num_attention_heads
        self.scale = (D // self.n_heads) ** -0.5
        self.query = nn.Linear(D, D)
        self.key = nn.Linear(D, D)
        self.value = nn.Linear(D, D)
        self.dropout_p = args.attention_probs_dropout_prob

    def __call__(self, x: mx.array, mask: mx.array | None, queries: mx.array | None = None) -> mx.array:
        """Attention of ``queries`` (default: every row of ``x``; (B, Q, D)) over the rows of ``x``."""
        queries = x if queries is None else queries
        B, Q, D = queries.shape
        heads = lambda h: h.reshape(B, h.shape[1], self.n_heads, -1).transpose(0, 2, 1, 3)  # noqa: E731
        q, k, v = heads(self.query(queries)), heads(self.key(x)), heads(self.value(x))  # (B, heads, ., d)
        out = cpu_ops.attention(q, k, v, self.scale, mask, self.dropout_p if self.training else 0.0)
        return out.transpose(0, 2, 1, 3).reshape(B, Q, D)


class BertSelfOutput(nn.Module):
    def __init__(self, args: ModelArgs, in_dims: int):
        super().__init__()
        self.dense = nn.Linear(in_dims, args.hidden_size)
        self.LayerNorm = norms.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.dropout = nn.Dropout(args.hidden_dropout_prob)

    def __call__(self, h: mx.array, residual: mx.array) -> mx.array:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BertAttention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.self = BertSelfAttention(args)
        self.output = BertSelfOutput(args, args.hidden_size)

    def __call__(self, x: mx.array, mask: mx.array | None, queries: mx.array | None = None) -> mx.array:
        queries = x if queries is None else queries
        return self.output(self.self(x, mask, queries), queries)


class BertIntermediate(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.dense = nn.Linear(args.hidden_size, args.intermediate_size)
        self.act = activation(args.hidden_act)

    def __call__(self, x: mx.array) -> mx.array:
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = BertAttention(args)
        self.intermediate = BertIntermediate(args)
        self.output = BertSelfOutput(args, args.intermediate_size)

    def __call__(self, x: mx.array, mask: mx.array | None, first_only: bool = False) -> mx.array:
        """(B, L, D), or (B, 1, D) for the first token alone (its output needs every key and value)."""
        h = self.attention(x, mask, x[:, :1] if first_only else None)
        return self.output(self.intermediate(h), h)


class BertEncoder(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.layer = [BertLayer(args) for _ in range(args.num_hidden_layers)]

    def __call__(self, x: mx.array, mask: mx.array | None, first_only: bool = False) -> mx.array:
        """``first_only``: the last layer computes the first token's output alone (B, 1, D): all a
        sequence classifier reads, at 1/L of that layer's queries and feed-forward."""
        for i, layer in enumerate(self.layer):
            x = layer(x, mask, first_only and i == len(self.layer) - 1)
        return x


class BertPooler(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.dense = nn.Linear(args.hidden_size, args.hidden_size)

    def __call__(self, h: mx.array) -> mx.array:
        return mx.tanh(self.dense(h[:, 0]))


class BertModel(nn.Module):
    """The encoder. Returns (last hidden state (B, L, D), pooled first token (B, D) or None);
    ``first_only``: the last hidden state of the first token alone, (B, 1, D)."""

    embeddings_class = BertEmbeddings
    base_model_prefix, task, head_modules = "bert", "base", ()
    word_embeddings_path = "embeddings.word_embeddings"

    def __init__(self, args: ModelArgs, add_pooling_layer: bool = True):
        super().__init__()
        self.args = args
        self.embeddings = self.embeddings_class(args)
        self.encoder = BertEncoder(args)
        if add_pooling_layer:
            self.pooler = BertPooler(args)

    def __call__(
        self,
        input_ids: mx.array,
        attention_mask: mx.array | None = None,
        token_type_ids: mx.array | None = None,
        inputs_embeds: mx.array | None = None,
        first_only: bool = False,
    ) -> tuple[mx.array, mx.array | None]:
        h = self.embeddings(input_ids, token_type_ids, inputs_embeds)
        h = self.encoder(h, padding_mask(attention_mask), first_only)
        return h, (self.pooler(h) if "pooler" in self else None)

    @property
    def layers(self) -> list:
        return self.encoder.layer


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.dense = nn.Linear(args.hidden_size, args.hidden_size)
        self.act = activation(args.hidden_act)
        self.LayerNorm = norms.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)

    def __call__(self, h: mx.array) -> mx.array:
        return self.LayerNorm(self.act(self.dense(h)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.transform = BertPredictionHeadTransform(args)
        if not args.tie_word_embeddings:
            self.decoder = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        self.bias = mx.zeros((args.vocab_size,))

    def __call__(self, h: mx.array, embeddings: nn.Module) -> mx.array:
        h = self.transform(h)
        logits = self.decoder(h) if "decoder" in self else embeddings.as_linear(h)
        return logits + self.bias


class BertOnlyMLMHead(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.predictions = BertLMPredictionHead(args)


def classifier_dropout(args: ModelArgs) -> nn.Dropout:
    p = args.classifier_dropout
    return nn.Dropout(args.hidden_dropout_prob if p is None else p)


class EncoderTaskModel(TaskModel):
    """The encoder under a head: ``head(hidden states (B, L, D), pooled (B, D) or None)``.
    ``positions`` (flat indices into B x L) runs a token head on those rows only: (K, D) -> (K, V).
    A head that reads the first token alone (``first_token_head``) gets (B, 1, D) hidden states."""

    first_token_head = False

    def __call__(
        self, input_ids, attention_mask=None, token_type_ids=None, inputs_embeds=None, positions=None
    ) -> mx.array:
        base = self[self.base_model_prefix]
        h, pooled = base(input_ids, attention_mask, token_type_ids, inputs_embeds, self.first_token_head)
        if positions is not None:
            h = h.reshape(-1, h.shape[-1])[positions]
        return self.head(h, pooled)


class BertForMaskedLM(EncoderTaskModel):
    base_class, base_model_prefix, task = BertModel, "bert", "mlm"
    base_kwargs, heads = {"add_pooling_layer": False}, {"cls": BertOnlyMLMHead}

    def head(self, h: mx.array, pooled: None) -> mx.array:
        return self.cls.predictions(h, self.bert.embeddings.word_embeddings)  # (B, L, vocab)


class BertForSequenceClassification(EncoderTaskModel):
    base_class, base_model_prefix, task, first_token_head = BertModel, "bert", "classify", True
    heads = {"classifier": lambda a: nn.Linear(a.hidden_size, a.num_labels), "dropout": classifier_dropout}

    def head(self, h: mx.array, pooled: mx.array) -> mx.array:
        return self.classifier(self.dropout(pooled))  # (B, num_labels)


MODEL_TYPE = "bert"
# Task -> head class; the class name is the HF architecture name.
TASKS = {"base": BertModel, "mlm": BertForMaskedLM, "classify": BertForSequenceClassification}
# Other HF architectures whose checkpoints hold one of our heads.
ARCHITECTURE_ALIASES = {"BertForPreTraining": "mlm"}
FAMILY = Family(
    causal=False,
    # Llama's projection names, as --lora-targets takes them, for BERT's modules
    lora_targets={
        "q_proj": ("query",),
        "k_proj": ("key",),
        "v_proj": ("value",),
        "o_proj": ("attention.output.dense",),
        "up_proj": ("intermediate.dense",),
        "down_proj": ("output.dense",),
    },
    dropped=((r"^cls\.seq_relationship\.", "BERT next-sentence-prediction head: unused"),),
)
