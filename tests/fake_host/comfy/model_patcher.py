"""Fake ``comfy.model_patcher.ModelPatcher``: load/offload devices, size, load and detach."""

from __future__ import annotations

from .patcher_extension import CallbacksMP


def module_size(module) -> int:
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.size = size
        self.parent = None
        self.callbacks = CallbacksMP.init_callbacks()
        if getattr(model, "device", None) is None:
            model.device = offload_device
        if not hasattr(model, "model_loaded_weight_memory"):
            model.model_loaded_weight_memory = 0
        self.model_size()

    def model_size(self) -> int:
        if self.size <= 0:
            self.size = module_size(self.model)
        return self.size

    def loaded_size(self) -> int:
        return self.model.model_loaded_weight_memory

    def current_loaded_device(self):
        return self.model.device

    def model_dtype(self):
        return getattr(self.model, "get_dtype", lambda: None)()

    def is_clone(self, other) -> bool:
        return other is self or getattr(other, "model", None) is self.model

    def add_callback(self, call_type: str, callback) -> None:
        self.callbacks[call_type].setdefault(None, []).append(callback)

    def get_all_callbacks(self, call_type: str) -> list:
        return [c for group in self.callbacks[call_type].values() for c in group]

    def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True,
                    force_patch_weights=False):
        if device_to is not None:
            self.model.to(device_to)
            self.model.device = device_to
        self.model.model_loaded_weight_memory = self.model_size()
        return self.model

    def detach(self, unpatch_all=True):
        self.model.to(self.offload_device)
        self.model.device = self.offload_device
        self.model.model_loaded_weight_memory = 0
        for callback in self.get_all_callbacks(CallbacksMP.ON_DETACH):
            callback(self, unpatch_all)
        return self.model
