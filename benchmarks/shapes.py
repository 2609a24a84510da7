"""The benchmarked model shapes, in one place, importable without MLX or PyTorch (the PyTorch peers
run in processes that must not load MLX)."""

LLAMA = {  # section 1: a small Llama for the LoRA / QLoRA step
    "hidden_size": 512,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "intermediate_size": 1376,
    "vocab_size": 8192,
}
LLAMA_QUICK = LLAMA | {"hidden_size": 256, "num_hidden_layers": 2, "intermediate_size": 704}
MINILM = {  # section 2: all-MiniLM-L6-v2's shape for the encoder step
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
    "num_labels": 2,
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
LORA_RANK, LORA_ALPHA = 8, 16
