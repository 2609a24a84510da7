"""The PyTorch peers: ``python torch_peers.py KIND JSON`` in a clean child process, or ``main()``
in run.py's own process (which imported mlx_models and runs MLX), the two side by side.

In a process that loaded the pthread build of OpenBLAS globally (as ``import mlx_models`` did
before it preferred the OpenMP build), PyTorch's train step ran ~5x slower here: libtorch's BLAS
calls resolve to OpenBLAS, whose own thread pool fights PyTorch's OpenMP threads. This module does
not import mlx or mlx_models itself. The child prints one JSON line: warm-up and timed step seconds
and the peak memory as the growth of the RSS high-water mark from before the model was built.
"""

import json
import sys
import time

LR = 1e-4


def rss_kb(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return float(line.split()[1])
    return float("nan")


def hf_config(cfg: dict) -> dict:
    return {k: v for k, v in cfg["model"].items() if k != "model_type"}


def peft_llama(cfg: dict):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    base = LlamaForCausalLM(LlamaConfig(**hf_config(cfg)))
    lora = LoraConfig(r=cfg["rank"], lora_alpha=cfg["alpha"], lora_dropout=0.0, target_modules=cfg["targets"])
    return get_peft_model(base, lora)


def bert(cfg: dict):
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(**hf_config(cfg)))


def roberta_mlm(cfg: dict):
    from transformers import RobertaConfig, RobertaForMaskedLM

    return RobertaForMaskedLM(RobertaConfig(**hf_config(cfg)))


def mlm_labels(ids, torch):
    """15% of the non-special tokens are predicted (80% replaced by <mask>, as the MLX rows)."""
    chosen = (torch.rand(ids.shape) < 0.15) & (ids > 3)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    masked = ids.clone()
    masked[chosen & (torch.rand(ids.shape) < 0.8)] = 50264
    return masked, labels


def main(kind: str, cfg: dict) -> dict:
    import torch

    torch.manual_seed(0)
    batch, seq, vocab = cfg["batch"], cfg["seq"], cfg["model"]["vocab_size"]
    ids = torch.randint(1000, vocab, (batch, seq))
    mask = torch.ones_like(ids)
    labels = ids if kind == "llama" else torch.randint(0, 2, (batch,))
    if kind == "roberta_mlm":
        ids, labels = mlm_labels(ids, torch)
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
        f.write("5")
    base = rss_kb("VmRSS")
    model = {"llama": peft_llama, "bert": bert, "roberta_mlm": roberta_mlm}[kind](cfg)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    out: dict = {"warmup_s": [], "times": [], "threads": torch.get_num_threads()}
    for key, n in (("warmup_s", cfg["warmup"]), ("times", cfg["steps"])):
        for _ in range(n):
            tic = time.perf_counter()
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as the trainer (max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()}")
            out[key].append(time.perf_counter() - tic)
    out["peak_gb"] = (rss_kb("VmHWM") - base) / 1e6
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], json.loads(sys.argv[2]))))
