"""What both sides of step_profile.py share, free of MLX and of PyTorch: the two profiled steps' shapes,
the matrix products of their linear layers, the op families that are ablated, and the timing."""

import statistics
import time

import shapes

LLAMA = {"model_type": "llama", "rms_norm_eps": 1e-5, "tie_word_embeddings": False, **shapes.LLAMA}
ENCODER = {"model_type": "bert", **shapes.MINILM}
QUICK = {
    "lora": {"hidden_size": 256, "num_hidden_layers": 2, "intermediate_size": 704},
    "encoder": {"num_hidden_layers": 2},
}
ABLATED = (
    ("attention", "attention (scores, softmax, mask)"),
    ("norms", "norms"),
    ("rope", "RoPE"),
    ("activations", "activations"),
)
FAMILIES = ("GEMM", *(label for _, label in ABLATED), "optimizer", "other")
RANK = shapes.LORA_RANK


def sizes(kind: str, quick: bool) -> tuple[dict, int, int]:
    """(model config, batch, sequence length) of the profiled step."""
    model = (LLAMA if kind == "lora" else ENCODER) | (QUICK[kind] if quick else {})
    if kind == "lora":
        return model, (2 if quick else 4), (64 if quick else 256)
    return model, (4 if quick else 8), (64 if quick else 128)


def matmul_shapes(kind: str, quick: bool) -> list[tuple[int, int, int]]:
    """(m, k, n) of every linear layer's products: x @ W (forward), dy @ W^T (the input's gradient)
    and, for trained weights, x^T @ dy (the weight's gradient)."""
    model, batch, seq = sizes(kind, quick)
    T, D, H, layers = (
        batch * seq,
        model["hidden_size"],
        model["intermediate_size"],
        model["num_hidden_layers"],
    )
    if kind == "encoder":
        trained = ([(D, D)] * 4 + [(D, H), (H, D)]) * layers
        return [s for i, o in trained for s in ((T, i, o), (T, o, i), (i, T, o))]
    kv = D * model["num_key_value_heads"] // model["num_attention_heads"]
    frozen = [(D, D), (D, kv), (D, kv), (D, D), (D, H), (D, H), (H, D)] * layers + [(D, model["vocab_size"])]
    lora = [(D, RANK), (RANK, D), (D, RANK), (RANK, kv), (D, RANK), (RANK, kv), (D, RANK), (RANK, D)] * layers
    products = [(T, i, o) for i, o in frozen] + [(T, o, i) for i, o in frozen]
    return products + [s for i, o in lora for s in ((T, i, o), (T, o, i), (i, T, o))]


def interleaved(steps: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each step, timed round-robin so that load drift hits every one alike."""
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, run in steps.items():
            tic = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - tic)
    return {name: statistics.median(t) for name, t in times.items()}
