"""training.loop.optim.Adam: torch's fused Adam without copies of channels-last tensors."""

import pytest
import torch

from training.loop import optim
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


@pytest.fixture
def fresh_checks():
    """Forget what earlier tests found out about this torch's Adam, before and after."""
    optim._init_group_matches.cache_clear()
    optim._dense_views_work.cache_clear()
    yield
    optim._init_group_matches.cache_clear()
    optim._dense_views_work.cache_clear()


def _train_alongside_stock(amsgrad=False):
    stock, ours = _model(2), _model(2)
    settings = {"lr": 1e-2, "betas": (0.5, 0.999), "fused": True, "amsgrad": amsgrad}
    stock_optimizer = torch.optim.Adam(stock.parameters(), **settings)
    our_optimizer = Adam(ours.parameters(), **settings)
    Adam(_model(3).parameters(), **settings)  # a second optimizer: no second warning
    for seed in range(3):
        _step(stock, stock_optimizer, seed)
        _step(ours, our_optimizer, seed)
    for a, b in zip(stock.parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _warnings(caplog):
    return [r for r in caplog.records if r.name == optim.__name__ and r.levelname == "WARNING"]


def test_falls_back_to_stock_adam_when_init_group_changes(monkeypatch, caplog, fresh_checks):
    original = torch.optim.Adam._init_group

    def renamed(self, group, params, grads, averages, squares, maxima, steps):
        return original(self, group, params, grads, averages, squares, maxima, steps)

    monkeypatch.setattr(torch.optim.Adam, "_init_group", renamed)
    _train_alongside_stock(amsgrad=True)
    assert len(_warnings(caplog)) == 1
    assert "_init_group" in _warnings(caplog)[0].getMessage()


@pytest.mark.parametrize("kernel_change", ["rejects views", "ignores views"])
def test_falls_back_to_stock_adam_when_the_fused_kernel_changes(
    monkeypatch, caplog, fresh_checks, kernel_change
):
    """A kernel that no longer updates dense views in place is caught before training."""
    fused = torch._fused_adam_

    def changed(params, grads, *args, **kwargs):
        if any(param._base is not None for param in params):
            if kernel_change == "rejects views":
                raise RuntimeError("expected leaf tensors")
            params = [param.clone() for param in params]
        return fused(params, grads, *args, **kwargs)

    monkeypatch.setattr(torch, "_fused_adam_", changed)
    _train_alongside_stock()
    assert len(_warnings(caplog)) == 1
    assert "fused Adam on cpu" in _warnings(caplog)[0].getMessage()


def test_current_torch_passes_the_checks(caplog, fresh_checks):
    _train_alongside_stock()
    assert optim._dense_views_work("cpu")
    assert not _warnings(caplog)
