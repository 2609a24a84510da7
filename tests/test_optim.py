"""The optimizer and schedule equal torch's AdamW with HF's warm-up + linear decay, step by step."""

import mlx.core as mx
import numpy as np
import pytest
import torch
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from mlx_models.config import TrainConfig
from mlx_models.step import make_optimizer

HF_SCHEDULES = {
    "linear": get_linear_schedule_with_warmup,
    "cosine": get_cosine_schedule_with_warmup,
    "constant": lambda opt, num_training_steps, **kw: get_constant_schedule_with_warmup(opt, **kw),
}


@pytest.mark.parametrize("lr_schedule", list(HF_SCHEDULES))
def test_adamw_and_schedule_match_torch(tmp_path, lr_schedule):
    total, cfg = (
        8,
        TrainConfig(
            learning_rate=1e-2,
            weight_decay=0.1,
            warmup_ratio=0.25,
            lr_schedule=lr_schedule,
            out=str(tmp_path),
        ),
    )
    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)
    grads = [
        {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=(3,)).astype(np.float32)}
        for _ in range(total)
    ]

    params = {"w": mx.array(w0), "b": mx.array(b0)}
    opt = make_optimizer(cfg, total)
    tw, tb = (torch.nn.Parameter(torch.from_numpy(x.copy())) for x in (w0, b0))
    # HF Trainer's parameter groups: biases and norm weights are not decayed.
    groups = [{"params": [tw], "weight_decay": cfg.weight_decay}, {"params": [tb], "weight_decay": 0.0}]
    topt = torch.optim.AdamW(groups, lr=cfg.learning_rate)
    sched = HF_SCHEDULES[lr_schedule](topt, num_warmup_steps=2, num_training_steps=total)
    for g in grads:
        params = opt.apply_gradients({k: mx.array(v) for k, v in g.items()}, params)
        tw.grad, tb.grad = torch.from_numpy(g["w"]), torch.from_numpy(g["b"])
        topt.step()
        sched.step()
        for name, t in (("w", tw), ("b", tb)):
            np.testing.assert_allclose(np.array(params[name]), t.detach().numpy(), rtol=1e-5, atol=1e-6)
