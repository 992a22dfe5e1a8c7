"""The pack's model folder, `models/face2diffusion`, registered with ComfyUI's folder_paths."""
from __future__ import annotations

import os
import re
import unicodedata

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
    # Names with invisible characters (a right-to-left override, a zero-width space), put there by
    # hand or by another program, would show in the list as some other name: left out.
    return sorted(f for f in os.listdir(folder) if f.endswith(".safetensors") and not invisible_characters(f))


MAX_NAME = 100  # characters
# File systems count bytes (ext4, APFS: 255 in UTF-8) or UTF-16 units (NTFS: 255): 200 bytes of
# UTF-8 leaves room for "_123.safetensors" and is under 255 UTF-16 units too.
MAX_NAME_BYTES = 200
_FORBIDDEN = set('<>:"/\\|?*')  # not allowed in Windows file names (/ and \\ separate folders)
# Characters drawn like a slash or backslash that Unicode normalisation leaves as they are: in a
# file list they make a name look like a folder path.
_SLASH_LOOKALIKES = set("\u2044\u2215\u29f8\u29f9\u2571\u2572\u27cb\u27cd")
# Invisible or unassigned: controls (Cc), format characters such as bidi overrides and zero-width
# spaces (Cf), line/paragraph separators (Zl, Zp), private use (Co), surrogates (Cs), unassigned (Cn).
_INVISIBLE = {"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"}
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
# What a JSON null (or JavaScript's undefined) becomes when the host turns it into a STRING input.
_NULL_NAMES = {"none", "null", "undefined", "nan"}


def _char_name(c: str) -> str:
    return f"U+{ord(c):04X} {unicodedata.name(c, unicodedata.category(c))}"


def invisible_characters(text: str) -> list[str]:
    return [c for c in dict.fromkeys(text) if unicodedata.category(c) in _INVISIBLE]


def identity_name_problem(name) -> str | None:
    """Why ``name`` cannot be an identity file name (saved on any platform, and shown in the
    Load Identity list as what it is), or None."""
    if not isinstance(name, str):
        return "missing (no name was given); give the person a name, e.g. 'alice'"
    if len(name) > 4 * MAX_NAME_BYTES:  # before any per-character work on a pasted megabyte
        return f"{len(name):,} characters long; use at most {MAX_NAME}, e.g. 'alice'"
    clean = name.strip()
    if not clean:
        return "empty; give the person a name, e.g. 'alice'"
    if clean.lower() in _NULL_NAMES:
        return (f"'{clean}' is what a missing (null) value becomes in an API prompt, not a name; "
                "give the person a name, e.g. 'alice'")
    hidden = invisible_characters(clean)
    if hidden:
        return (f"contains invisible or control characters ({', '.join(_char_name(c) for c in hidden[:3])}), "
                "which can make a name look like another in the file list; use letters, digits, spaces, - and _")
    normal = unicodedata.normalize("NFKC", clean)
    lookalikes = sorted({c for c in clean if c in _SLASH_LOOKALIKES or
                         (c not in _FORBIDDEN and any(x in _FORBIDDEN for x in unicodedata.normalize("NFKC", c)))})
    if lookalikes:
        return (f"contains {', '.join(_char_name(c) for c in lookalikes[:3])}, drawn like a folder separator or "
                "another character not allowed in file names; use a plain name such as 'alice'")
    if normal != clean:
        hint = f"type it as '{normal[:60]}'" if identity_name_problem(normal) is None else "use plain letters and digits"
        return (f"'{clean[:60]}' holds characters that Unicode writes another way (NFKC normalisation: full-width or "
                f"compatibility forms, accents typed as separate marks), so two names that look alike could be "
                f"different files; {hint}")
    bad = sorted({c for c in clean if c in _FORBIDDEN})
    if bad:
        return (f"'{clean[:60]}' contains {' '.join(bad)}; use a plain file name without folders or these characters, "
                "e.g. 'alice'")
    if clean.startswith(".") or clean.endswith("."):
        return f"'{clean[:60]}' starts or ends with a dot; use a plain name such as 'alice'"
    stem = clean[: -len(".safetensors")] if clean.endswith(".safetensors") else clean
    if len(stem) > MAX_NAME:
        return f"{len(stem)} characters long; use at most {MAX_NAME}, e.g. 'alice'"
    size = len(stem.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        return (f"{size} bytes long in UTF-8 ({len(stem)} characters; emoji and most non-Latin letters take 2-4 bytes "
                f"each, and file systems count bytes); use at most {MAX_NAME_BYTES} bytes, e.g. a shorter name")
    if stem.split(".")[0].lower() in _WINDOWS_RESERVED:
        return f"'{stem}' is a reserved device name on Windows; choose another, e.g. '{stem}_1'"
    return None


def identity_stem(name: str) -> str:
    """The name without a typed ".safetensors" (any case): the file gets that extension once."""
    return name[: -len(".safetensors")] if name.lower().endswith(".safetensors") else name


def identity_name_files(name: str) -> list[str]:
    """Files saved under ``name``: name.safetensors, name_1.safetensors, ... (existing ones)."""
    folder, stem = identities_folder(), identity_stem(name)
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


def full_path(name: str) -> str:
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise FileNotFoundError(
            f"'{name}' is not in the face2diffusion model folder ({searched_folders()}). "
            "Put msid.pt and mapping.pt there (see the pack's README, 'Weights') and press R to refresh."
        )
    return path
