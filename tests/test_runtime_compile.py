"""model.runtime.TorchRuntime with compile: inductor's freezing option, or stock compile."""

import logging

import numpy as np
import pytest
import torch

from model import runtime
from model.networks import UNetGenerator


@pytest.fixture
def fresh_switch():
    runtime._freezing_switch.cache_clear()
    yield
    runtime._freezing_switch.cache_clear()


def _generator():
    torch.manual_seed(0)
    return UNetGenerator(3, 3, num_downs=3, base_width=4).eval()


def _batch():
    return np.random.default_rng(0).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)


def test_compiled_calls_run_with_inductor_freezing_on(monkeypatch, caplog, fresh_switch):
    """Compilation happens at the calls (first one, new shapes), so freezing must be on there:
    passing it as torch.compile's option is accepted but does not freeze on torch 2.14."""
    import torch._inductor.config as inductor_config

    seen = []

    class Recording(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.inner = module

        def forward(self, x):
            seen.append(inductor_config.freezing)
            return self.inner(x)

    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: Recording(module))
    generator = _generator()
    compiled = runtime.TorchRuntime(generator, compile=True)
    output = compiled(_batch())
    assert seen == [True] and inductor_config.freezing is False  # on only during the call
    np.testing.assert_array_equal(output, runtime.TorchRuntime(generator)(_batch()))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_compiles_without_freezing_where_inductor_lost_the_switch(
    monkeypatch, caplog, fresh_switch
):
    """An inductor without the ``freezing`` switch: the runtime compiles stock, says so once,
    and translates like eager PyTorch."""
    import torch._inductor.config as inductor_config

    monkeypatch.delattr(inductor_config, "freezing", raising=False)
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)
    generator = _generator()
    compiled = [runtime.TorchRuntime(generator, compile=True) for _ in range(2)]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "without freezing" in warnings[0].getMessage()
    eager = runtime.TorchRuntime(generator)(_batch())
    np.testing.assert_array_equal(compiled[0](_batch()), eager)
