"""The distributed learner's plumbing: torchrun process group, FSDP2 sharding, full state dicts.

Launched with `torchrun --nproc_per_node N -m eprl.training train ...`; without torchrun every helper
here is a no-op (world size 1) and the learner runs exactly as in one process.

- `shard_model`: `torch.distributed.fsdp.fully_shard` on each decoder layer, then on the root
  (embeddings, final norm, lm_head: tied weights must share one FSDP group). Master weights,
  optimizer state and gradients stay float32 and sharded; `MixedPrecisionPolicy(param_dtype)`
  all-gathers bf16/fp16 copies for compute; gradients are reduced in float32 with a plain SUM
  (the learner already divides by the whole minibatch's normalizers, see training/losses.py
  AggNorm, so each rank's loss is its share of the minibatch's loss, not a mean to be averaged).
- `full_model_state` / `full_optimizer_state`: gathered, unsharded, on rank 0 (CPU), keyed by
  parameter name: checkpoints written from them load at any world size (`load_optimizer_state`).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from .config import ConfigError
from .model_parts import decoder_layers
from .numerics import DTYPES

log = logging.getLogger("eprl.training.distributed")

# Rank 0 runs rollouts and evaluation while the other ranks wait in a collective: be patient.
TIMEOUT = datetime.timedelta(hours=2)


def init_distributed(device: str = "auto") -> int:
    """Join torchrun's process group; returns the world size. Not under torchrun (no WORLD_SIZE in the
    environment): nothing happens, returns 1.

    Backend: nccl with one GPU per rank when `device` (run.device) allows CUDA and this node has a GPU
    for every local rank; gloo on CPU otherwise. Every rank decides from the same facts (device string,
    LOCAL_WORLD_SIZE, GPU count), so they agree. `auto` with fewer GPUs than ranks falls back to CPU;
    an explicit `cuda` then is an error.
    """
    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        return world_size()
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cuda = device != "cpu" and gpus > 0
    if cuda and ranks_here > gpus:
        if device != "auto":
            raise ConfigError(
                f"run.device={device!r} under torchrun needs one GPU per rank: {ranks_here} ranks on this "
                f"node but {gpus} GPU(s) visible; use --nproc_per_node {gpus} or run.device=cpu"
            )
        log.warning(f"[distributed] {ranks_here} ranks but {gpus} GPU(s): using gloo on CPU")
        cuda = False
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return world_size()


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def process_rank() -> int:
    """This process's rank: the process group's, else torchrun's RANK (before init_distributed), else 0."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    """True when the learner is sharded over more than one process."""
    return world_size() > 1


def barrier() -> None:
    if active():
        dist.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. builds a cache), the others after it has finished."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def device() -> torch.device:
    """This rank's compute device: cuda:LOCAL_RANK under nccl, else CPU."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def resolve_device(name: str = "auto") -> torch.device:
    """`run.device` -> a torch.device. Under torchrun the rank's own device wins (cuda:LOCAL_RANK / cpu)."""
    if active():
        return device()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"run.device={name!r} but torch sees no CUDA device; use run.device=cpu (or auto)")
    return dev


# ----------------------------------------------------------------------------- collectives
def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (pickled; fine for one batch per iteration)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_(t: torch.Tensor) -> torch.Tensor:
    """In place: rank 0's tensor on every rank."""
    if active():
        moved = t.to(device())
        dist.broadcast(moved, src=0)
        if moved is not t:
            t.copy_(moved)
    return t


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In place: sum (or max) over ranks."""
    if active():
        moved = t.to(device())
        dist.all_reduce(moved, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        if moved is not t:
            t.copy_(moved)
    return t


# ----------------------------------------------------------------------------- sharding
def shard_model(model: nn.Module, dtype: str = "fp32") -> nn.Module:
    """FSDP2, in place: one FSDP group per decoder layer, then the root; returns `model`.

    bf16 / fp16: param_dtype is the compute dtype, reduce_dtype float32; the sharded master
    parameters stay float32. Gradients are summed over ranks (divide factor 1; forced
    SUM collectives, which gloo needs: it has no PREMUL_SUM).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    # fp32: no casting at all (the parameters' own dtype, e.g. float64 in tests, is kept).
    mp = (
        MixedPrecisionPolicy()
        if dtype == "fp32"
        else MixedPrecisionPolicy(param_dtype=DTYPES[dtype], reduce_dtype=torch.float32)
    )
    # An explicit mesh on this rank's device type: fully_shard's default mesh is the accelerator's,
    # which on a GPU host running gloo (more ranks than GPUs) would claim cuda:LOCAL_RANK.
    mesh = init_device_mesh(device().type, (world_size(),))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def reshard(model: nn.Module) -> None:
    """Free the root's all-gathered parameters after a no-grad forward. FSDP2 keeps the root
    unsharded after forward (backward would need it at once); without a backward it would stay
    so, and the module would expose its unsharded tensors instead of the optimizer's."""
    if is_sharded(model):
        model.reshard()


def local_float(x) -> float:
    """A float from a tensor that may be a (replicated) DTensor, e.g. clip_grad_norm_'s total."""
    return float(x.full_tensor()) if hasattr(x, "full_tensor") else float(x)


# ----------------------------------------------------------------------------- state dicts
def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kw)


def full_model_state(model: nn.Module) -> Optional[dict]:
    """The unsharded float32 model state dict on rank 0 (CPU), None elsewhere. Collective."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_options(full_state_dict=True, cpu_offload=True))
    return state if is_main() else None


def copy_full_weights(sharded: nn.Module, plain: Optional[nn.Module]) -> None:
    """plain <- sharded's full weights (rank 0's `plain`; other ranks pass None). Collective."""
    state = full_model_state(sharded)
    if plain is not None and state is not None:
        plain.load_state_dict(state)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The full optimizer state keyed by parameter name (the same at every world size);
    complete on rank 0, empty elsewhere under FSDP. Collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(full_state_dict=True, cpu_offload=True))


def _names_for_indices(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """An `optimizer.state_dict()` (keys = parameter indices, older checkpoints) -> keyed by name."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    return {
        "state": {order[i]: v for i, v in state["state"].items()},
        "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]],
    }


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a full optimizer state (from any world size) into this rank's (sharded) optimizer.
    Every rank passes the full state (each reads the checkpoint file)."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    if (
        state["param_groups"]
        and state["param_groups"][0]["params"]
        and isinstance(state["param_groups"][0]["params"][0], int)
    ):
        state = _names_for_indices(model, optimizer, state)
    set_optimizer_state_dict(model, optimizer, state, options=_options(full_state_dict=True))
