"""Run megatron-core on the CPU: the one place that knows a machine may have no GPU.

megatron-core assumes CUDA (or TE/Apex) in these ways, and each is answered here:

| assumption                                  | on the CPU backend                                   |
|---------------------------------------------|------------------------------------------------------|
| tensors are made with ``device="cuda"`` or  | a ``TorchFunctionMode`` sends them to the CPU         |
| ``torch.cuda.current_device()`` / ``.cuda()``|                                                      |
| the "CUDA" RNG tracker forks a GPU generator | the fork runs on the CPU default generator, so       |
|                                             | ``tracker.fork()`` still gives a separate stream      |
| ``torch.cuda.synchronize`` / events exist    | no-ops                                               |
| the optimizers check ``param.type()`` for    | a CPU tensor's ``type()`` reads as its CUDA twin      |
| ``torch.cuda.{Float,Half,BFloat16}Tensor``   | (``torch.cuda.BFloat16Tensor``), so megatron's mixed- |
|                                             | precision and distributed optimizers run as on a GPU  |
| grad clipping asserts CUDA float tensors     | the same in-place scaling without the assertion       |
| batched p2p relies on NCCL's message pairing | unbatched p2p (``config_overrides``)                  |
| the distributed optimizer's checkpoint       | torch's Adam, which keeps ``step`` per parameter, is  |
| expects TE/Apex FusedAdam (step per group)   | adapted (``_adapt_distributed_optimizer``)            |

Collectives use gloo. The distributed optimizer's ``reduce_scatter_tensor`` and
``all_gather_into_tensor`` need no mapping: gloo implements both in every torch we support (>= 2.6;
its reduce-scatter is an all-reduce and a slice). Core attention must not use megatron-core's CUDA
global memory buffer: our ``PackedDotProductAttention`` does not. Nothing else in the package
checks for cpu vs cuda beyond ``runtime.distributed`` choosing this backend at start-up.
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

_ACTIVE_MODE: _CudaToCpuMode | None = None


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # megatron passes torch.cuda.current_device(), an int on a real GPU.
    return isinstance(device, int) and not isinstance(device, bool)


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments to the CPU for every torch call made while active."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in (torch.Tensor.cuda,):
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if not name.startswith("torch.cuda.") else name
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = "cpu"
        if func in (torch.Tensor.to,) and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


def cuda_as_cpu() -> _CudaToCpuMode:
    """A context in which CUDA device arguments and ``.cuda()`` stay off the GPU, on any machine:
    ``with cuda_as_cpu(), torch.device("meta"):`` builds a model as shapes only, even where
    megatron-core calls ``.cuda()`` on a buffer (a meta tensor cannot be copied to a GPU)."""
    return _CudaToCpuMode()


def _set_rng_state(new_state: torch.Tensor, device=-1, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


@torch.no_grad()
def _clip_grad_by_total_norm(parameters, max_norm: float, total_norm: float, use_decoupled_grad: bool = False):
    """megatron's clip asserts ``torch.cuda.FloatTensor``; same scaling, any device."""
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0:
        for param in parameters:
            grad = getattr(param, attr, None)
            if grad is not None:
                grad.mul_(clip_coeff)


def _adapt_distributed_optimizer() -> None:
    """megatron-core 0.16.1's DistributedOptimizer checkpoints as if its inner optimizer were TE's
    or Apex's FusedAdam, whose ``step`` belongs to the parameter group. Without TE or Apex (always
    the case on the CPU) it wraps torch's Adam, whose ``step`` is a tensor in each parameter's
    state, and loading a checkpoint breaks in three ways, each mended here:

    - ``state_dict()`` reads that step, and megatron asks for it before the first step when it
      loads: the empty state is given what Adam's first step would create (zero moments, step 0);
    - the fully-reshardable load copies every key of a parameter's state from the checkpoint,
      which holds no ``step`` (it is restored from the parameter groups): the step is set aside;
    - that restored step is one tensor shared by every parameter, which torch's Adam would then
      advance once per parameter per step: each parameter gets its own copy.
    """
    from megatron.core.optimizer import distrib_optimizer

    if distrib_optimizer.HAVE_APEX_OR_TE:
        return
    optimizer_class = distrib_optimizer.DistributedOptimizer
    state_dict, load_fully_reshardable = (optimizer_class.state_dict,
                                          optimizer_class.load_parameter_state_from_fully_reshardable)

    def state_dict_from_the_first_step(self):
        if not self.optimizer.state:
            self.init_state_fn(self.optimizer, self.config)
            for state in self.optimizer.state.values():
                state["step"] = torch.tensor(0.0)
        return state_dict(self)

    def load_fully_reshardable_with_own_steps(self, param_state):
        steps = {param: state.pop("step") for param, state in self.optimizer.state.items() if "step" in state}
        load_fully_reshardable(self, param_state)
        for param, step in steps.items():
            self.optimizer.state[param]["step"] = step.clone()

    optimizer_class.state_dict = state_dict_from_the_first_step
    optimizer_class.load_parameter_state_from_fully_reshardable = load_fully_reshardable_with_own_steps


def enable() -> None:
    """Install the CPU backend for this process (idempotent)."""
    global _ACTIVE_MODE
    if _ACTIVE_MODE is not None:
        return
    if torch.cuda.is_available():
        raise RuntimeError("the CPU backend must not be enabled on a machine with a GPU")
    import megatron.core.optimizer.optimizer as mcore_optimizer
    import megatron.core.tensor_parallel.random as mcore_random

    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda device=None: None
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    torch.cuda.set_rng_state = lambda new_state, device="cuda": torch.set_rng_state(new_state)
    # Only the RNG tracker calls this to seed its streams; it restores the state afterwards.
    torch.cuda.manual_seed = lambda seed: torch.manual_seed(seed)
    torch.cuda.nvtx.range_push = lambda *a, **k: None
    torch.cuda.nvtx.range_pop = lambda *a, **k: None
    # megatron's own setter defers to torch.cuda._lazy_call, which never runs without CUDA.
    mcore_random._set_cuda_rng_state = _set_rng_state
    # Activation recomputation saves and restores the "CUDA" RNG through this getter.
    mcore_random._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: torch.get_rng_state()
    mcore_optimizer.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm
    _adapt_distributed_optimizer()
    _ACTIVE_MODE = _CudaToCpuMode()
    _ACTIVE_MODE.__enter__()


def is_enabled() -> bool:
    return _ACTIVE_MODE is not None


def config_overrides() -> dict:
    """megatron-core settings the CPU backend needs (none on a GPU).

    gloo pairs point-to-point messages between two ranks in the order they are posted; a batched
    isend/irecv can post the forward activation and the backward gradient that travel the same
    way in different orders on the two sides, silently swapping equal-shaped tensors (seen with
    interleaved pipelining). Unbatched p2p posts them in a fixed order.
    """
    return {"batch_p2p_comm": False} if is_enabled() else {}


@contextlib.contextmanager
def suspended():
    """Leave the redirection off for a block (e.g. code that must see real devices)."""
    if _ACTIVE_MODE is None:
        yield
        return
    _ACTIVE_MODE.__exit__(None, None, None)
    try:
        yield
    finally:
        _ACTIVE_MODE.__enter__()
