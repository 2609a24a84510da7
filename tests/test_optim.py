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

from mlx_models.train.config import TrainConfig
from mlx_models.train.step import make_optimizer


def assert_close(actual, desired, **tol):
    """assert_allclose that fails on NaN or inf (numpy's passes when both sides are NaN)."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert np.isfinite(actual).all() and np.isfinite(desired).all()
    np.testing.assert_allclose(actual, desired, **tol)


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
            assert_close(np.array(params[name]), t.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bias_correction", [True, False])
def test_kernel_adamw_equals_mlx_adamw(monkeypatch, bias_correction):
    """The one-kernel update (mlx_models/kernels) against mlx.optimizers.AdamW, on a parameter that
    splits over the threads, under a schedule; and it is the kernel that ran."""
    import mlx.optimizers as optim

    from mlx_models import kernels
    from mlx_models.train import adamw as step

    if kernels.native is None:
        pytest.skip("mlx_models/kernels is not built (make kernels)")
    real, calls = kernels.native, []

    class Spy:
        def adamw(self, *args):
            calls.append(1)
            return real.adamw(*args)

    monkeypatch.setattr(kernels, "native", Spy())
    kw = dict(
        learning_rate=optim.linear_schedule(1e-2, 1e-3, 5), weight_decay=0.1, bias_correction=bias_correction
    )
    ours, theirs = step.AdamW(**kw), optim.AdamW(**kw)
    mx.random.seed(0)
    p = {"w": mx.random.normal((300, 129)), "b": mx.random.normal((7,))}
    a, b = p, p
    for _ in range(5):
        g = {k: mx.random.normal(v.shape) for k, v in p.items()}
        a, b = ours.apply_gradients(g, a), theirs.apply_gradients(g, b)
    mx.eval(a, b)
    for k in p:  # within a few ulps of each array's scale: the kernel rounds once per multiply-add
        assert_close(np.array(a[k]), np.array(b[k]), rtol=1e-6, atol=1e-6)
        for s in ("m", "v"):
            assert_close(np.array(ours.state[k][s]), np.array(theirs.state[k][s]), rtol=1e-6, atol=2e-7)
    assert calls == [1] * 10


@pytest.mark.parametrize("kernels", [True, False])
def test_scaled_update_equals_mean_then_clip_grad_norm(monkeypatch, kernels):
    """TrainStep's update: the mean over `count` examples and the clipping factor folded into one
    scale (multiplied in by the AdamW kernel), against MLX's g / count then clip_grad_norm."""
    import mlx.nn as nn
    import mlx.optimizers as optim

    from mlx_models import kernels as compiled
    from mlx_models.train import adamw

    if not kernels:
        monkeypatch.setattr(compiled, "native", None)
    elif compiled.native is None:
        pytest.skip("mlx_models/kernels is not built (make kernels)")
    mx.random.seed(1)
    model = nn.Linear(200, 100)
    ref = nn.Linear(200, 100)
    ref.update(model.parameters())
    kw = dict(learning_rate=1e-2, weight_decay=0.1, bias_correction=True)
    ours, theirs = optim.MultiOptimizer([adamw.AdamW(**kw)]), optim.MultiOptimizer([optim.AdamW(**kw)])
    count, max_norm = 7.0, 1.0
    for _ in range(3):
        g = {"weight": mx.random.normal((100, 200)) * 3, "bias": mx.random.normal((100,))}
        norm = adamw.global_norm(g) / count
        assert_close(norm.item(), optim.clip_grad_norm(g, 1e9)[1].item() / count, rtol=1e-5)
        scale = mx.minimum(max_norm / (norm + 1e-6), 1.0) / count
        adamw.update(ours, model, g, scale)
        clipped, _ = optim.clip_grad_norm({k: v / count for k, v in g.items()}, max_norm)
        theirs.update(ref, clipped)
        mx.eval(model.parameters(), ref.parameters())
    assert ours.optimizers[0].gradient_scale is None  # the scale was the call's only
    for k in ("weight", "bias"):
        assert_close(np.array(model[k]), np.array(ref[k]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("max_grad_norm", [0.05, None])
@pytest.mark.parametrize("compiled", [True, False])
def test_train_step_equals_mean_clip_and_mlx_adamw(max_grad_norm, compiled):
    """TrainStep with make_optimizer (the AdamW kernel, the mean and the clipping folded into its
    scale; compiled as the trainer runs it) against the same step spelled out with MLX's ops:
    value_and_grad of the summed loss, g / count, clip_grad_norm, mlx.optimizers.AdamW in the
    same two groups. The gradient norm changes from step to step, so a scale traced once and
    replayed stale would fail; 0.05 clips every step, None never."""
    import mlx.nn as nn
    import mlx.optimizers as optim

    from mlx_models.train.step import TrainStep, make_optimizer

    cfg = TrainConfig(learning_rate=1e-2, weight_decay=0.1, warmup_ratio=0.0, out="unused")

    def loss_fn(model, batch):
        return ((model(batch["x"]) - batch["y"]) ** 2).mean(), mx.array(batch["x"].shape[0])

    mx.random.seed(2)
    ours, ref = nn.Linear(40, 30), nn.Linear(40, 30)
    ref.update(ours.parameters())
    step = TrainStep(ours, make_optimizer(cfg, 10), loss_fn, max_grad_norm=max_grad_norm, compile=compiled)
    kw = dict(learning_rate=optim.linear_schedule(1e-2, 0.0, 10), bias_correction=True)
    ref_opt = optim.MultiOptimizer(
        [optim.AdamW(weight_decay=0.0, **kw), optim.AdamW(weight_decay=0.1, **kw)], [lambda _, p: p.ndim < 2]
    )
    grad_fn = nn.value_and_grad(ref, lambda m, b: loss_fn(m, b)[0] * b["x"].shape[0])
    for i in range(4):
        batch = {"x": mx.random.normal((6, 40)) * (i + 1), "y": mx.random.normal((6, 30))}
        step([{**batch, "attention_mask": mx.ones((6, 1))}])
        _, g = grad_fn(ref, batch)
        g = {k: v / 6 for k, v in g.items()}
        if max_grad_norm:
            g, _ = optim.clip_grad_norm(g, max_grad_norm)
        ref_opt.update(ref, g)
        mx.eval(ours.parameters(), ref.parameters())
    for k in ("weight", "bias"):
        assert_close(np.array(ours[k]), np.array(ref[k]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.array(ours["weight"]), np.array(nn.Linear(40, 30).weight))  # it trained
