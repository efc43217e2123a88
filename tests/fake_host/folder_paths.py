"""Fake ComfyUI ``folder_paths``: the model-folder registry, with ComfyUI's semantics."""

from __future__ import annotations

import os

supported_pt_extensions: set[str] = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors",
                                     ".pkl", ".sft"}
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}
models_dir = ""
base_path = ""
output_directory = ""
filename_list_calls: list[str] = []


def reset(models: str) -> None:
    """Fresh registry rooted at ``models`` (a ``checkpoints`` entry like the real one)."""
    global models_dir, base_path, output_directory
    models_dir = models
    base_path = os.path.dirname(models)
    output_directory = os.path.join(base_path, "output")
    folder_names_and_paths.clear()
    filename_list_calls.clear()
    folder_names_and_paths["checkpoints"] = ([os.path.join(models, "checkpoints")],
                                             supported_pt_extensions)


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    if folder_name in folder_names_and_paths:
        paths, _exts = folder_names_and_paths[folder_name]
        if full_folder_path in paths:
            if is_default and paths[0] != full_folder_path:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        elif is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)
    else:
        # Like ComfyUI (and extra_model_paths.yaml): a new entry accepts any extension.
        folder_names_and_paths[folder_name] = ([full_folder_path], set())


def get_folder_paths(folder_name: str) -> list[str]:
    return folder_names_and_paths[folder_name][0][:]


def filter_files_extensions(files, extensions) -> list[str]:
    return sorted(f for f in files
                  if os.path.splitext(f)[-1].lower() in extensions or len(extensions) == 0)


def get_filename_list(folder_name: str) -> list[str]:
    filename_list_calls.append(folder_name)
    paths, exts = folder_names_and_paths[folder_name]
    out: set[str] = set()
    for root in paths:
        if not os.path.isdir(root):
            continue
        for dirpath, _dirs, files in os.walk(root, followlinks=True):
            for f in files:
                out.add(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return filter_files_extensions(out, exts)


def get_full_path(folder_name: str, filename: str) -> str | None:
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for root in folder_names_and_paths[folder_name][0]:
        full = os.path.join(root, filename)
        if os.path.isfile(full):
            return full
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    full = get_full_path(folder_name, filename)
    if full is None:
        raise FileNotFoundError(
            f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return full


def get_output_directory() -> str:
    return output_directory
