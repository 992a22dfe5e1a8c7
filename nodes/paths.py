"""The pack's model folder, `models/face2diffusion`, registered with ComfyUI's folder_paths."""
from __future__ import annotations

import os
import re

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


MAX_NAME = 100  # characters; leaves room for "_123.safetensors" within every file system's 255 bytes
_FORBIDDEN = set('<>:"/\\|?*')  # not allowed in Windows file names (/ and \\ separate folders)
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


def identity_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an identity file name (saved on any platform), or None."""
    clean = name.strip()
    if not clean:
        return "empty; give the person a name, e.g. 'alice'"
    if any(ord(c) < 32 or ord(c) == 127 for c in clean):
        return "contains control characters (e.g. a NUL or a line break); use letters, digits, spaces, - and _"
    bad = sorted({c for c in clean if c in _FORBIDDEN})
    if bad:
        return (f"'{clean[:60]}' contains {' '.join(bad)}; use a plain file name without folders or these characters, "
                "e.g. 'alice'")
    if clean.startswith(".") or clean.endswith("."):
        return f"'{clean[:60]}' starts or ends with a dot; use a plain name such as 'alice'"
    stem = clean[: -len(".safetensors")] if clean.endswith(".safetensors") else clean
    if len(stem) > MAX_NAME or len(stem.encode()) > 2 * MAX_NAME:
        return f"{len(stem)} characters long; use at most {MAX_NAME}, e.g. 'alice'"
    if stem.split(".")[0].lower() in _WINDOWS_RESERVED:
        return f"'{stem}' is a reserved device name on Windows; choose another, e.g. '{stem}_1'"
    return None


def _stem(name: str) -> str:
    return name[: -len(".safetensors")] if name.endswith(".safetensors") else name


def identity_name_files(name: str) -> list[str]:
    """Files saved under ``name``: name.safetensors, name_1.safetensors, ... (existing ones)."""
    folder, stem = identities_folder(), _stem(name)
    if not os.path.isdir(folder):
        return []
    pattern = re.compile(re.escape(stem) + r"(_\d+)?\.safetensors")
    return sorted((f for f in os.listdir(folder) if pattern.fullmatch(f)), key=lambda f: (len(f), f))


def identity_name_state(name: str) -> tuple:
    """(file, size, modification time) of each file saved under ``name``: changes when one is
    written, deleted or replaced."""
    folder = identities_folder()
    state = []
    for f in identity_name_files(name):
        try:
            st = os.stat(os.path.join(folder, f))
        except OSError:
            continue
        state.append((f, st.st_size, st.st_mtime_ns))
    return (name, tuple(state))


def new_identity_path(name: str) -> str:
    """A path in the identities folder that does not exist yet: name, name_1, name_2, ..."""
    folder = identities_folder()
    stem = _stem(name)
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
