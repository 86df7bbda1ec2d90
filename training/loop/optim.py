"""Adam for channels-last models: the fused kernel without layout copies.

``torch._fused_adam_`` on the CPU makes every non-contiguous tensor contiguous first, so each
channels-last conv weight, its gradient and both moment buffers were cloned at every step
(65 ms per step for the paper generator on 2 CPU cores). A channels-last tensor is dense in
memory, though, and Adam is elementwise: viewed as (out, kh, kw, in) it is contiguous, and
the kernel updates it in place.

Handing it those views leans on two private details of PyTorch: ``Adam.step`` collects each
group's tensors through ``_init_group``, whose lists are edited here, and the fused kernel
updates the dense tensors it is given in place. Both are checked before first use on a device
(the signature, then one tiny step against stock Adam); where either differs this optimizer
is plain ``torch.optim.Adam``, and the log says so once.
"""

from __future__ import annotations

import functools
import inspect
import logging

import torch

logger = logging.getLogger(__name__)

_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
_INIT_GROUP_PARAMETERS = (
    "self",
    "group",
    "params_with_grad",
    "grads",
    "exp_avgs",
    "exp_avg_sqs",
    "max_exp_avg_sqs",
    "state_steps",
)


class Adam(torch.optim.Adam):
    """``torch.optim.Adam`` (same arguments, state and results) that hands the fused kernel
    dense views of channels-last tensors instead of letting it copy them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Checked now: the check syncs with the device, which a training step must not do.
        for group in self.param_groups:
            if group["fused"] and group["params"]:
                self._use_dense_views(group)

    def _use_dense_views(self, group: dict) -> bool:
        return _dense_views_work(group["params"][0].device.type)

    def _init_group(self, group, *args, **kwargs):
        has_complex = super()._init_group(group, *args, **kwargs)
        if group["fused"] and not kwargs and self._use_dense_views(group):
            _hand_dense_views(self.state, group["amsgrad"], *args)
        return has_complex


def _hand_dense_views(
    state, amsgrad, params_with_grad, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps
) -> None:
    """Swap the channels-last entries of ``_init_group``'s lists for dense views."""
    for index, param in enumerate(params_with_grad):
        if not _channels_last(param):
            continue
        param_state = state[param]
        # Moments restored from a checkpoint arrive contiguous: relayout them once.
        for key in _MOMENTS:
            if key in param_state and not _channels_last(param_state[key]):
                param_state[key] = param_state[key].contiguous(memory_format=torch.channels_last)
        exp_avgs[index], exp_avg_sqs[index] = param_state["exp_avg"], param_state["exp_avg_sq"]
        if amsgrad:
            max_exp_avg_sqs[index] = param_state["max_exp_avg_sq"]
        moments = [param_state[key] for key in _MOMENTS[: 3 if amsgrad else 2]]
        if not all(_channels_last(tensor) for tensor in (grads[index], *moments)):
            continue  # mixed layouts: leave it to the kernel's own copies
        params_with_grad[index], grads[index] = _dense(param), _dense(grads[index])
        exp_avgs[index], exp_avg_sqs[index] = _dense(moments[0]), _dense(moments[1])
        if amsgrad:
            max_exp_avg_sqs[index] = _dense(moments[2])


def _channels_last(tensor: torch.Tensor) -> bool:
    return (
        tensor.dim() == 4
        and tensor.is_contiguous(memory_format=torch.channels_last)
        and not tensor.is_contiguous()
    )


def _dense(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.permute(0, 2, 3, 1)


@functools.cache
def _init_group_matches() -> bool:
    """Whether ``torch.optim.Adam._init_group`` takes the lists ``_hand_dense_views`` edits."""
    init_group = getattr(torch.optim.Adam, "_init_group", None)
    try:
        parameters = tuple(inspect.signature(init_group).parameters)
    except (TypeError, ValueError):
        parameters = ()
    if parameters != _INIT_GROUP_PARAMETERS:
        logger.warning(
            "torch %s: torch.optim.Adam._init_group is missing or takes %s; using stock Adam, "
            "which copies channels-last tensors at every fused step",
            torch.__version__,
            parameters,
        )
        return False
    return True


@functools.cache
def _dense_views_work(device_type: str) -> bool:
    """Whether the fused kernel on ``device_type`` updates dense views in place exactly as it
    updates the tensors themselves (asked once per device type)."""
    if not _init_group_matches():
        return False
    try:
        same = _probe(torch.device(device_type))
        problem = "gave other results than stock Adam"
    except Exception as error:  # whatever the kernel raises, stock Adam remains correct
        same, problem = False, f"failed ({error!r})"
    if not same:
        logger.warning(
            "torch %s: fused Adam on %s with dense views of channels-last tensors %s; using "
            "stock Adam, which copies them at every step",
            torch.__version__,
            device_type,
            problem,
        )
    return same


class _UncheckedAdam(Adam):
    """The probe's Adam: dense views without asking whether they work."""

    def _use_dense_views(self, group: dict) -> bool:
        return True


def _probe(device: torch.device) -> bool:
    """Two fused AMSGrad steps on a small channels-last weight, with views and without."""
    shape = (2, 3, 2, 2)
    start = torch.linspace(-1.0, 1.0, 24, device=device).view(shape)
    gradient = torch.linspace(0.5, -1.5, 24, device=device).view(shape)
    weights = []
    for optimizer_class in (torch.optim.Adam, _UncheckedAdam):
        weight = torch.nn.Parameter(start.contiguous(memory_format=torch.channels_last))
        optimizer = optimizer_class([weight], lr=0.1, amsgrad=True, fused=True)
        for scale in (1.0, -0.5):
            weight.grad = (scale * gradient).contiguous(memory_format=torch.channels_last)
            optimizer.step()
        weights.append(weight.detach())
    stock, ours = weights
    return bool(torch.equal(stock, ours) and not torch.equal(ours, start))
