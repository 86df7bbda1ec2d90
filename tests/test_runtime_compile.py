"""model.runtime.TorchRuntime with compile: inductor's freezing option, or stock compile."""

import logging

import numpy as np
import pytest
import torch

from model import runtime
from model.networks import UNetGenerator


@pytest.fixture
def fresh_options():
    runtime._inference_compile_options.cache_clear()
    yield
    runtime._inference_compile_options.cache_clear()


def _generator():
    torch.manual_seed(0)
    return UNetGenerator(3, 3, num_downs=3, base_width=4).eval()


def test_compiles_with_freezing_on_this_torch(monkeypatch, caplog, fresh_options):
    options = []
    compile_ = torch.compile

    def recording(module, **kwargs):
        options.append(kwargs.get("options"))
        return compile_(module, **kwargs)  # lazy: nothing compiles before the first call

    monkeypatch.setattr(torch, "compile", recording)
    runtime.TorchRuntime(_generator(), compile=True)
    assert options[-1] == {"freezing": True}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_compiles_without_freezing_where_inductor_lost_the_option(
    monkeypatch, caplog, fresh_options
):
    """An inductor that no longer knows ``freezing`` rejects it at torch.compile; the runtime
    then compiles with stock options, says so once, and translates like eager PyTorch."""
    compiled_with = []

    def without_freezing(module, options=None):
        if options and "freezing" in options:
            raise RuntimeError("Unexpected optimization option freezing, known options are [...]")
        compiled_with.append(options)
        return module  # stands in for the compiled module

    monkeypatch.setattr(torch, "compile", without_freezing)
    generator = _generator()
    compiled = [runtime.TorchRuntime(generator, compile=True) for _ in range(2)]
    assert compiled_with == [{}, {}]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "without freezing" in warnings[0].getMessage()
    batch = np.random.default_rng(0).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    eager = runtime.TorchRuntime(generator)(batch)
    np.testing.assert_array_equal(compiled[0](batch), eager)
