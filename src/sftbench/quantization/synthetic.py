"""Stand-in tensor values for random-weight quantized models, and the unquantized tensors made from them.

For speed and memory only shapes, dtypes and value ranges matter. The values are the same on every
call and device, so a GPTQ checkpoint written to disk and the same model built on the device hold
equal numbers.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


class Synthetic:
    """Values of the right ranges, made at memory speed by tiling fixed random pools on `device`."""

    POOL = 1_000_003  # prime: the tiling does not line up with rows

    def __init__(self, device: torch.device):
        import torch

        self.device = device
        generator = torch.Generator().manual_seed(0)
        self._sources = {
            "bits": torch.randint(-(2**31), 2**31 - 1, (self.POOL,), dtype=torch.int32, generator=generator),
            "normal": torch.randn(self.POOL, generator=generator) * 0.02,  # as transformers initializes
            "scales": torch.rand(self.POOL, generator=generator) * 9e-3 + 1e-3,  # GPTQ scales are about 1e-3..1e-2
        }
        self._pools: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def tiled(self, source: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        import torch

        if (source, dtype) not in self._pools:
            self._pools[source, dtype] = self._sources[source].to(device=self.device, dtype=dtype)
        pool = self._pools[source, dtype]
        out = torch.empty(math.prod(shape), dtype=dtype, device=self.device)
        full, rest = divmod(out.numel(), self.POOL)
        if full:
            out[: full * self.POOL].view(full, self.POOL).copy_(pool.expand(full, self.POOL))
        if rest:
            out[full * self.POOL :].copy_(pool[:rest])
        return out.view(shape)

    def parameter(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An unquantized parameter (`name`: its own name, e.g. weight): matrices normal, biases 0, norm weights 1."""
        import torch

        if len(shape) > 1:
            return self.tiled("normal", shape, dtype)
        return (torch.zeros if name == "bias" else torch.ones)(shape, dtype=dtype, device=self.device)


def materialize_unquantized(model: PreTrainedModel, synthetic: Synthetic, dtype: torch.dtype,
                            quantized: tuple[type, ...]) -> None:
    """Every tensor of `model` still on the meta device, outside the `quantized` layers, made on the
    device: parameters from `synthetic`, buffers (rotary tables) computed by transformers' initialization."""
    import torch

    for module in model.modules():
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if isinstance(module, quantized) or not any(tensor.is_meta for tensor in own):
            continue
        module.to_empty(device=synthetic.device, recurse=False)
        model._init_weights(module)
        with torch.no_grad():
            for name, parameter in module.named_parameters(recurse=False):
                parameter.copy_(synthetic.parameter(name, tuple(parameter.shape), dtype))
