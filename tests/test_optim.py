"""training.loop.optim.Adam: torch's fused Adam without copies of channels-last tensors."""

import pytest
import torch

from training.loop.optim import Adam


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 4), torch.nn.Conv2d(16, 4, 3))
    return layers.to(memory_format=torch.channels_last)


def _step(model, optimizer, seed):
    torch.manual_seed(seed)
    optimizer.zero_grad(set_to_none=True)
    x = torch.randn(2, 8, 12, 12).contiguous(memory_format=torch.channels_last)
    model(x).square().mean().backward()
    optimizer.step()


@pytest.mark.numeric
@pytest.mark.parametrize("amsgrad", [False, True])
def test_same_updates_as_torch_adam_without_layout_copies(monkeypatch, amsgrad):
    stock, ours = _model(0), _model(0)
    settings = {"lr": 1e-2, "betas": (0.5, 0.999), "fused": True, "amsgrad": amsgrad}
    stock_optimizer = torch.optim.Adam(stock.parameters(), **settings)
    our_optimizer = Adam(ours.parameters(), **settings)
    for seed in range(3):
        _step(stock, stock_optimizer, seed)

    seen = []
    fused = torch._fused_adam_

    def checking(params, grads, exp_avgs, exp_avg_sqs, *args, **kwargs):
        seen.extend(t.is_contiguous() for t in (*params, *grads, *exp_avgs, *exp_avg_sqs))
        return fused(params, grads, exp_avgs, exp_avg_sqs, *args, **kwargs)

    monkeypatch.setattr(torch, "_fused_adam_", checking)
    for seed in range(3):
        _step(ours, our_optimizer, seed)
    assert seen and all(seen)  # the kernel never has to copy
    for a, b in zip(stock.parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert b.stride() == a.stride()
    ours_state, stock_state = our_optimizer.state_dict(), stock_optimizer.state_dict()
    assert ours_state["state"].keys() == stock_state["state"].keys()


@pytest.mark.numeric
def test_resumes_from_contiguous_moments():
    """A checkpoint's moments load contiguous; the step relayouts them and stays exact."""
    stock, ours = _model(1), _model(1)
    stock_optimizer = torch.optim.Adam(stock.parameters(), lr=1e-2, fused=True)
    our_optimizer = Adam(ours.parameters(), lr=1e-2, fused=True)
    for model, optimizer in ((stock, stock_optimizer), (ours, our_optimizer)):
        _step(model, optimizer, 0)
    saved = our_optimizer.state_dict()
    for state in saved["state"].values():
        for key in ("exp_avg", "exp_avg_sq"):
            state[key] = state[key].contiguous()
    our_optimizer.load_state_dict(saved)
    for model, optimizer in ((stock, stock_optimizer), (ours, our_optimizer)):
        _step(model, optimizer, 1)
    for a, b in zip(stock.parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    moments = our_optimizer.state[next(ours.parameters())]["exp_avg"]
    assert moments.is_contiguous(memory_format=torch.channels_last)
