"""FSDP2 sharding of a policy (``fully_shard`` per decoder layer), for Lightning's ModelParallelStrategy.

Lightning's ``ModelParallelStrategy`` leaves the parallelisation to the module's ``configure_model``:
:meth:`RLModule.configure_model <sapo_lightning.module.RLModule.configure_model>` calls
:func:`shard_with_copies`, which shards the policy and each frozen full copy (π_old, π_ref), all
built from the same weights before any of them is sharded, so the three hold the same local shard
of every parameter and the refresh π_old ← π_θ is a local copy on each rank (no communication).

Only Hugging Face causal LMs are sharded (:class:`~sapo_lightning.lm.policy.CausalLMPolicy`): every
submodule whose class the model names in ``_no_split_modules`` (its decoder layers) becomes a
unit, and the model itself the root unit (embeddings, final norm, output layer). The policy calls
the model's own ``forward`` at every decode step and in ``score``, which is where FSDP2 gathers
and frees the parameters.
"""

from __future__ import annotations

from torch import nn

from sapo_lightning.checks import ConfigError
from sapo_lightning.loop.frozen import Frozen, WeightSnapshot
from sapo_lightning.policies import Policy


def causal_lms(policy: nn.Module) -> list[nn.Module]:
    """The outermost ``transformers`` models inside ``policy`` (those with ``_no_split_modules``)."""
    found: list[nn.Module] = []
    for name, module in policy.named_modules():
        if getattr(module, "_no_split_modules", None) and not any(name.startswith(f"{n}.") for n, _ in found):
            found.append((name, module))
    return [module for _, module in found]


def shard(policy: nn.Module, mesh, frozen: bool = False) -> None:
    """``fully_shard`` each decoder layer of ``policy``'s causal LM, then the model, over ``mesh``.

    FSDP2 keeps a root unit gathered after its forward, for the backward that follows; a
    ``frozen`` copy has no backward, so its root is resharded after every forward too."""
    from torch.distributed.fsdp import fully_shard

    models = causal_lms(policy)
    if not models:
        raise ConfigError(f"trainer.strategy: ModelParallelStrategy (FSDP) shards Hugging Face causal LMs "
                          f"(CausalLMPolicy); got {type(policy).__name__}")
    for model in models:
        layer_classes = set(model._no_split_modules)
        for module in model.modules():
            if module is not model and type(module).__name__ in layer_classes:
                fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh, reshard_after_forward=True if frozen else None)


def shard_with_copies(policy: nn.Module, copies: tuple[Frozen, ...], mesh) -> tuple[Frozen, ...]:
    """Shard ``policy`` and its frozen full copies alike over ``mesh``; the copies to keep in their place
    (a :class:`~sapo_lightning.loop.frozen.WeightSnapshot` is retaken from the sharded parameters)."""
    shard(policy, mesh)
    for frozen in copies:
        if isinstance(frozen, Policy):
            shard(frozen, mesh, frozen=True)
    return tuple(WeightSnapshot(policy) if isinstance(frozen, WeightSnapshot) else frozen for frozen in copies)


def data_parallel_mesh(mesh):
    """The mesh to shard over: its ``data_parallel`` dimension (the whole mesh if it has no such name).

    Tensor parallelism is not supported: its dimension must have size 1."""
    names = mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() != 1:
        raise ConfigError("trainer.strategy.init_args.tensor_parallel_size must be 1 (only FSDP is supported); "
                          f"got {mesh['tensor_parallel'].size()}")
    return mesh["data_parallel"] if "data_parallel" in names else mesh
