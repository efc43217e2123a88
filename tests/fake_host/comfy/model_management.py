"""Fake ``comfy.model_management`` on a CPU-only machine, recording what nodes ask of it.

``load_models_gpu`` keeps ComfyUI's signature and list of loaded models; ``unload_all_models``
(what ``/free`` does) detaches them; the interrupt flag works like ComfyUI's.
"""

from __future__ import annotations

import torch

from .model_patcher import module_size  # noqa: F401  (ComfyUI exposes it here too)


class InterruptProcessingException(Exception):
    pass


OOM_EXCEPTION = torch.cuda.OutOfMemoryError
TORCH_DEVICE = torch.device("cpu")
current_loaded_models: list = []   # patchers, most recent first
load_calls: list[dict] = []        # kwargs of every load_models_gpu call
_interrupt = False


def get_torch_device():
    return TORCH_DEVICE


def unet_offload_device():
    return torch.device("cpu")


def text_encoder_offload_device():
    return torch.device("cpu")


def intermediate_device():
    return torch.device("cpu")


def is_device_cpu(device) -> bool:
    return torch.device(device).type == "cpu"


def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
    return device is not None and not is_device_cpu(device)


def should_use_bf16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
    return device is not None and not is_device_cpu(device)


def get_free_memory(dev=None, torch_free_too=False):
    free = 64 * 1024 ** 3
    return (free, free) if torch_free_too else free


def load_models_gpu(models, memory_required=0, force_patch_weights=False,
                    minimum_memory_required=None, force_full_load=False):
    load_calls.append(dict(models=list(models), memory_required=memory_required,
                           force_patch_weights=force_patch_weights,
                           minimum_memory_required=minimum_memory_required,
                           force_full_load=force_full_load))
    for m in models:
        m.patch_model(m.load_device)
        if m in current_loaded_models:
            current_loaded_models.remove(m)
        current_loaded_models.insert(0, m)


def load_model_gpu(model):
    return load_models_gpu([model])


def loaded_models(only_currently_used=False):
    return list(current_loaded_models)


def free_memory(memory_required, device, keep_loaded=()):
    unloaded = [m for m in current_loaded_models if m not in keep_loaded]
    for m in unloaded:
        m.detach()
        current_loaded_models.remove(m)
    return unloaded


def unload_all_models():
    free_memory(1e30, get_torch_device())


def soft_empty_cache(force=False):
    pass


def interrupt_current_processing(value=True):
    global _interrupt
    _interrupt = value


def processing_interrupted():
    return _interrupt


def throw_exception_if_processing_interrupted():
    global _interrupt
    if _interrupt:
        _interrupt = False
        raise InterruptProcessingException()


def reset() -> None:
    global _interrupt
    current_loaded_models.clear()
    load_calls.clear()
    _interrupt = False
