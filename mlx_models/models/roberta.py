"""RoBERTa (HF ``model_type: roberta``): BERT's encoder with its own embeddings and heads."""

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from . import bert, cpu_ops, norms


@dataclass
class ModelArgs(bert.ModelArgs):
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1

    @property
    def max_positions(self) -> int:
        # Positions start at pad_token_id + 1 (see RobertaEmbeddings): 514 -> 512 tokens.
        return self.max_position_embeddings - self.pad_token_id - 1


class RobertaEmbeddings(bert.BertEmbeddings):
    def position_ids(self, input_ids: mx.array) -> mx.array:
        # RoBERTa numbers real tokens from pad_token_id + 1 and gives pads pad_token_id
        # itself, hence max_position_embeddings = max_length + 2 (fairseq legacy).
        not_pad = (input_ids != self.pad_token_id).astype(mx.int32)
        return mx.cumsum(not_pad, axis=1) * not_pad + self.pad_token_id

    def __init__(self, args: ModelArgs):
        super().__init__(args)
        self.pad_token_id = args.pad_token_id


class RobertaModel(bert.BertModel):
    embeddings_class = RobertaEmbeddings
    base_model_prefix = "roberta"


class RobertaLMHead(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.dense = nn.Linear(args.hidden_size, args.hidden_size)
        self.layer_norm = norms.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        if not args.tie_word_embeddings:
            self.decoder = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        self.bias = mx.zeros((args.vocab_size,))

    def __call__(self, h: mx.array, embeddings: nn.Module) -> mx.array:
        h = self.layer_norm(cpu_ops.gelu(self.dense(h)))
        logits = self.decoder(h) if "decoder" in self else embeddings.as_linear(h)
        return logits + self.bias


class RobertaClassificationHead(nn.Module):
    """First token (<s>) -> dropout -> dense -> tanh -> dropout -> out_proj; no pooler."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.dense = nn.Linear(args.hidden_size, args.hidden_size)
        self.dropout = bert.classifier_dropout(args)
        self.out_proj = nn.Linear(args.hidden_size, args.num_labels)

    def __call__(self, h: mx.array) -> mx.array:
        x = self.dropout(h[:, 0])
        x = self.dropout(mx.tanh(self.dense(x)))
        return self.out_proj(x)


class RobertaForMaskedLM(bert.EncoderTaskModel):
    base_class, base_model_prefix, task = RobertaModel, "roberta", "mlm"
    base_kwargs, heads = {"add_pooling_layer": False}, {"lm_head": RobertaLMHead}

    def head(self, h: mx.array, pooled: None) -> mx.array:
        return self.lm_head(h, self.roberta.embeddings.word_embeddings)  # (B, L, vocab)


class RobertaForSequenceClassification(bert.EncoderTaskModel):
    base_class, base_model_prefix, task, first_token_head = RobertaModel, "roberta", "classify", True
    base_kwargs, heads = {"add_pooling_layer": False}, {"classifier": RobertaClassificationHead}

    def head(self, h: mx.array, pooled: None) -> mx.array:
        return self.classifier(h)  # (B, num_labels)


MODEL_TYPE = "roberta"
TASKS = {"base": RobertaModel, "mlm": RobertaForMaskedLM, "classify": RobertaForSequenceClassification}
ARCHITECTURE_ALIASES: dict[str, str] = {}
FAMILY = bert.FAMILY
