"""Llama 2 and 3 (HF ``model_type: llama``). Module names equal the HF weight keys, so a
converted checkpoint loads in ``mlx_lm.load`` as well."""

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.rope_utils import initialize_rope

from . import cpu_ops, norms
from .base import BaseModelArgs, Family, TaskModel, causal_mask, last_token_index

ROPE_TYPES = ("default", "linear", "llama3")


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 2048
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    rope_parameters: dict[str, Any] | None = None  # transformers 5 spelling
    tie_word_embeddings: bool = False
    num_labels: int = 2
    initializer_range: float = 0.02

    activations = ("silu",)
    max_positions = None  # RoPE has no position table: longer inputs run (as in transformers)

    def __post_init__(self):
        # transformers 5 folds rope_theta and rope_scaling into rope_parameters.
        if self.rope_parameters:
            self.rope_theta = self.rope_parameters.get("rope_theta", self.rope_theta)
            self.rope_scaling = self.rope_parameters
        if self.rope_scaling and self._rope_type() == "default":
            self.rope_scaling = None
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        if isinstance(self.num_attention_heads, int) and self.num_attention_heads > 0:
            self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        super().__post_init__()

    def checks(self) -> list[tuple[bool, str]]:
        rope = self._rope_type() if self.rope_scaling else "default"
        heads, kv = self.num_attention_heads, self.num_key_value_heads
        return super().checks() + [
            (rope not in ROPE_TYPES, f"rope type {rope!r} (supported: {', '.join(ROPE_TYPES)})"),
            (heads % kv != 0, f"num_attention_heads {heads} not a multiple of num_key_value_heads {kv}"),
            (self.head_dim < 1, f"head_dim {self.head_dim} (must be a positive integer)"),
            (bool(self.attention_dropout), "attention_dropout > 0 (Llama trains without it; set it to 0.0)"),
        ]

    def _rope_type(self) -> str:
        return self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        D, hd = args.hidden_size, args.head_dim
        self.n_heads, self.n_kv_heads = args.num_attention_heads, args.num_key_value_heads
        self.scale = hd**-0.5
        self.q_proj = nn.Linear(D, self.n_heads * hd, bias=args.attention_bias)
        self.k_proj = nn.Linear(D, self.n_kv_heads * hd, bias=args.attention_bias)
        self.v_proj = nn.Linear(D, self.n_kv_heads * hd, bias=args.attention_bias)
        self.o_proj = nn.Linear(self.n_heads * hd, D, bias=args.attention_bias)
        self.rope = initialize_rope(
            hd, args.rope_theta, False, args.rope_scaling, args.max_position_embeddings
        )

    def __call__(self, x: mx.array, mask: mx.array | str | None) -> mx.array:
        B, L, _ = x.shape
        q = self.q_proj(x).reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)  # (B, n_heads, L, hd)
        k = self.k_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)  # (B, n_kv, L, hd)
        v = self.v_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        # Positions are 0..L-1 even under left padding, as in transformers: RoPE only sees
        # relative offsets, and pads are masked, so real tokens are unaffected.
        q, k = self.rope(q), self.rope(k)
        out = cpu_ops.attention(q, k, v, self.scale, mask, causal=True)  # the mask is causal_mask's
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        D, H = args.hidden_size, args.intermediate_size
        self.gate_proj = nn.Linear(D, H, bias=args.mlp_bias)
        self.up_proj = nn.Linear(D, H, bias=args.mlp_bias)
        self.down_proj = nn.Linear(H, D, bias=args.mlp_bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(cpu_ops.silu(self.gate_proj(x)) * self.up_proj(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.self_attn = Attention(args)
        self.mlp = MLP(args)
        self.input_layernorm = norms.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = norms.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, x: mx.array, mask: mx.array | str | None) -> mx.array:
        h = x + self.self_attn(self.input_layernorm(x), mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    base_model_prefix, task, head_modules = "model", "base", ()
    word_embeddings_path = "embed_tokens"

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args) for _ in range(args.num_hidden_layers)]
        self.norm = norms.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(
        self,
        input_ids: mx.array,
        attention_mask: mx.array | None = None,
        inputs_embeds: mx.array | None = None,
    ) -> mx.array:
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, L, D)
        mask = self.mask(h.shape[1], attention_mask)
        for layer in self.layers:
            h = layer(h, mask)
        return self.norm(h)  # (B, L, D)

    def mask(self, L: int, attention_mask: mx.array | None) -> mx.array | str:
        return causal_mask(L, attention_mask)


def untied_lm_head(args: ModelArgs) -> nn.Linear | None:
    return None if args.tie_word_embeddings else nn.Linear(args.hidden_size, args.vocab_size, bias=False)


class LlamaTaskModel(TaskModel):
    """The decoder under a head: ``head(hidden states (B, L, D), attention mask or None)``."""

    def __call__(self, input_ids, attention_mask=None, inputs_embeds=None) -> mx.array:
        return self.head(self.model(input_ids, attention_mask, inputs_embeds), attention_mask)


class LlamaForCausalLM(LlamaTaskModel):
    base_class, base_model_prefix, task, heads = LlamaModel, "model", "lm", {"lm_head": untied_lm_head}

    def head(self, h: mx.array, attention_mask: mx.array | None) -> mx.array:
        if "lm_head" in self:
            return self.lm_head(h)
        return self.model.embed_tokens.as_linear(h)  # (B, L, vocab)


Model = LlamaForCausalLM  # mlx-lm's name for the causal LM


class LlamaForSequenceClassification(LlamaTaskModel):
    base_class, base_model_prefix, task = LlamaModel, "model", "classify"
    heads = {"score": lambda a: nn.Linear(a.hidden_size, a.num_labels, bias=False)}

    def head(self, h: mx.array, attention_mask: mx.array | None) -> mx.array:
        # Llama has no pad token, so the last real token is found from the attention
        # mask, not from pad ids (transformers needs config.pad_token_id for this).
        if attention_mask is None:
            last = h[:, -1]
        else:
            last = h[mx.arange(h.shape[0]), last_token_index(attention_mask)]
        return self.score(last)  # (B, num_labels)


MODEL_TYPE = "llama"
TASKS = {"base": LlamaModel, "lm": LlamaForCausalLM, "classify": LlamaForSequenceClassification}
ARCHITECTURE_ALIASES: dict[str, str] = {}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FAMILY = Family(
    causal=True,
    lora_targets={n: (n,) for n in PROJECTIONS},
    dropped=((r"(^|\.)rotary_emb\.inv_freq$", "buffer: recomputed from rope_theta"),),
    mlx_lm=True,
    gguf_arch="llama",
    gguf_permuted=(("q_proj.weight", "num_attention_heads"), ("k_proj.weight", "num_key_value_heads")),
)
