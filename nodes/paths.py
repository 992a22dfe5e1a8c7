"""The pack's model folder, `models/face2diffusion`, registered with ComfyUI's folder_paths."""
from __future__ import annotations

import os

import folder_paths

FOLDER = "face2diffusion"
EXTENSIONS = {".pt", ".pth", ".safetensors"}


def register_model_folder() -> None:
    """Add `models/face2diffusion` with our extensions, keeping any paths a user's
    extra_model_paths.yaml already gave the folder (which arrive with no extensions set)."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths = list(folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))[0])
    if default not in paths:
        paths.insert(0, default)
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(EXTENSIONS))
    try:  # so users find the folder; a read-only install still works
        os.makedirs(default, exist_ok=True)
    except OSError:
        pass


def searched_folders() -> str:
    return ", ".join(folder_paths.get_folder_paths(FOLDER))


def model_files() -> list[str]:
    return folder_paths.get_filename_list(FOLDER)


def full_path(name: str) -> str:
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise FileNotFoundError(
            f"'{name}' is not in the face2diffusion model folder ({searched_folders()}). "
            "Put msid.pt and mapping.pt there (see the pack's README, 'Weights') and press R to refresh."
        )
    return path
