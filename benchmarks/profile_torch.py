"""The PyTorch side of step_profile.py, in a child process: ``python profile_torch.py KIND JSON``.

Same method as the MLX side: the step timed whole, then with one op family replaced by a
pass-through; GEMMs timed on their own at the step's shapes. Prints one JSON line.
"""

import contextlib
import json
import statistics
import sys
import time

import torch
import torch_peers
from profile_common import ABLATED, RANK, interleaved, matmul_shapes, sizes
from shapes import LORA_TARGETS as TARGETS


def peer_config(kind: str, quick: bool) -> dict:
    model, batch, seq = sizes(kind, quick)
    if kind == "lora":
        return {"model": model, "rank": RANK, "alpha": 16, "targets": TARGETS, "batch": batch, "seq": seq}
    return {"model": model, "batch": batch, "seq": seq}


def no_attention(*args, **kwargs):
    return lambda module, query, *rest, **kw: (query.transpose(1, 2), None)  # (B, L, H, hd)


@contextlib.contextmanager
def ablate(model, family: str):
    from transformers.models.bert import modeling_bert
    from transformers.models.llama import modeling_llama

    saved = []

    def patch(owner, name, value):
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    if family == "attention":
        for m in (modeling_llama, modeling_bert):
            iface = m.ALL_ATTENTION_FUNCTIONS.get_interface
            patch(
                m.ALL_ATTENTION_FUNCTIONS,
                "get_interface",
                lambda *a, **k: lambda mod, q, *r, **kw: (q.transpose(1, 2), None),
            )
            del iface
    elif family == "norms":
        patch(modeling_llama.LlamaRMSNorm, "forward", lambda self, x: x)
        patch(torch.nn.LayerNorm, "forward", lambda self, x: x)
    elif family == "rope":
        patch(modeling_llama, "apply_rotary_pos_emb", lambda q, k, cos, sin, *a, **kw: (q, k))
    elif family == "activations":
        for m in model.modules():
            if "Activation" in type(m).__name__ or isinstance(m, torch.nn.SiLU | torch.nn.GELU):
                saved.append((m, "forward", m.forward))
                m.forward = lambda x: x
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def make_step(kind: str, cfg: dict, family: str | None = None, update: bool = True):
    """A zero-argument train step on a fresh model; ``family`` is patched out while it runs."""
    torch.manual_seed(0)
    model = {"lora": torch_peers.peft_llama, "encoder": torch_peers.bert}[kind](cfg)
    model.train()
    batch, seq, vocab = cfg["batch"], cfg["seq"], cfg["model"]["vocab_size"]
    ids = torch.randint(1000, vocab, (batch, seq))
    labels = ids if kind == "lora" else torch.randint(0, 2, (batch,))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        with ablate(model, family) if family else contextlib.nullcontext():
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if update:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    return step


def gemm_seconds(kind: str, quick: bool, repeats: int) -> float:
    mats = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in matmul_shapes(kind, quick)]
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        for x, y in mats:
            x @ y
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def main(kind: str, options: dict) -> dict:
    quick = options["quick"]
    cfg, repeats = peer_config(kind, quick), 2 if quick else 5
    steps = {"full": make_step(kind, cfg), "optimizer": make_step(kind, cfg, update=False)}
    steps |= {family: make_step(kind, cfg, family) for family, _ in ABLATED}
    t = interleaved(steps, repeats)
    families = {label: max(t["full"] - t[family], 0.0) for family, label in ABLATED}
    families["optimizer"] = max(t["full"] - t["optimizer"], 0.0)
    families["GEMM"] = gemm_seconds(kind, quick, repeats)
    families["other"] = max(t["full"] - sum(families.values()), 0.0)
    return {"step_s": t["full"], "families": families, "threads": torch.get_num_threads()}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], json.loads(sys.argv[2]))))
