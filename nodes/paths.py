"""The pack's model folder, `models/face2diffusion`, registered with ComfyUI's folder_paths."""
from __future__ import annotations

import os

import folder_paths

FOLDER = "face2diffusion"
IDENTITIES = "identities"  # sub-folder of saved identities
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
    """Weight files, without the saved identities that live in the same folder tree."""
    return [f for f in folder_paths.get_filename_list(FOLDER) if not f.replace("\\", "/").startswith(IDENTITIES + "/")]


def identities_folder() -> str:
    return os.path.join(folder_paths.get_folder_paths(FOLDER)[0], IDENTITIES)


def identity_files() -> list[str]:
    folder = identities_folder()
    if not os.path.isdir(folder):
        return []
    return sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))


def new_identity_path(name: str) -> str:
    """A path in the identities folder that does not exist yet: name, name_1, name_2, ..."""
    folder = identities_folder()
    stem = name[: -len(".safetensors")] if name.endswith(".safetensors") else name
    candidate, n = os.path.join(folder, stem + ".safetensors"), 0
    while os.path.exists(candidate):
        n += 1
        candidate = os.path.join(folder, f"{stem}_{n}.safetensors")
    return candidate


def full_path(name: str) -> str:
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise FileNotFoundError(
            f"'{name}' is not in the face2diffusion model folder ({searched_folders()}). "
            "Put msid.pt and mapping.pt there (see the pack's README, 'Weights') and press R to refresh."
        )
    return path
