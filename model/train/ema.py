"""An EMA of the trained weights, kept where they are kept: under FSDP2 each rank holds the EMA of its shards.

diffusers' EMAModel keeps whole copies and writes whole tensors back into the parameters, which a
sharded parameter cannot take. Here the EMA of a parameter is a clone of it (a DTensor's clone is
a DTensor with the same placement), updated on local tensors; the whole EMA exists only when a
checkpoint gathers it, one tensor at a time. The decay warms up as EMAModel's did:
min(decay, (1 + n) / (10 + n)) after n updates, the first update a copy.
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor: a DTensor's local shard, a plain tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class EMA:
    def __init__(self, parameters: dict[str, torch.Tensor], decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {name: p.detach().clone() for name, p in parameters.items()}

    def current_decay(self) -> float:
        return 0.0 if self.updates == 0 else min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def step(self, parameters: dict[str, torch.Tensor]) -> None:
        shadows = [local(self.shadow[name]) for name in self.shadow]
        # in the EMA's dtype: DeepSpeed may cast the module's weights to bf16 after the EMA was taken
        weights = [local(parameters[name]).detach().to(shadow.dtype) for name, shadow in zip(self.shadow, shadows)]
        torch._foreach_lerp_(shadows, weights, 1 - self.current_decay())
        self.updates += 1

    def full_state(self, keep: bool) -> dict[str, torch.Tensor]:
        """The whole EMA on the CPU where `keep` (the main process), gathered tensor by tensor; every
        rank must call it when the EMA is sharded."""
        whole = {}
        for name, shadow in self.shadow.items():
            tensor = shadow.full_tensor() if isinstance(shadow, DTensor) else shadow
            if keep:
                whole[name] = tensor.detach().cpu()
        return whole

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise KeyError(f"the saved EMA has {sorted(set(state['shadow']) ^ set(self.shadow))} where this one does not")
        self.updates = state["updates"]
        with torch.no_grad():
            for name, tensor in state["shadow"].items():
                local(self.shadow[name]).copy_(local(tensor))
