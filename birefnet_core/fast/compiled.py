"""The compiled model: :class:`~birefnet_core.model.BiRefNet` whose forward enters one
``torch.compile`` graph (built by :func:`birefnet_core.optimize.compile_for_inference`)."""

from __future__ import annotations

from typing import Callable

import torch

from ..model.birefnet import BiRefNet

__all__ = ["CompiledBiRefNet"]


class CompiledBiRefNet(BiRefNet):
    """A BiRefNet whose ``forward`` runs ``compiled_forward`` (``torch.compile`` of
    :meth:`BiRefNet._forward`).

    Made by :meth:`from_model`, which changes the class of the given model in place rather than
    wrapping it: hosts (ComfyUI's model patcher, the CLI's job) hold that very object, and it
    stays a :class:`BiRefNet` with the same modules and state dict."""

    compiled_forward: Callable[[torch.Tensor], torch.Tensor]

    @classmethod
    def from_model(cls, model: BiRefNet, compiled_forward: Callable[[torch.Tensor], torch.Tensor]
                   ) -> "CompiledBiRefNet":
        if not isinstance(model, BiRefNet):
            raise TypeError(f"expected a BiRefNet, got {type(model).__name__}")
        model.__class__ = cls
        model.compiled_forward = compiled_forward
        return model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Graph capture cannot run in inference mode; entering the compiled function in one
        # autograd state whatever the caller's (ComfyUI runs nodes in inference mode, a script
        # may not) lets one graph serve them all.
        with torch.inference_mode(False), torch.no_grad():
            # An inference-tensor input would need a graph of its own.
            return self.compiled_forward(x.clone() if x.is_inference() else x)
