"""The identifier rule: where the two identity tokens go in a prompt, and how.

Face2Diffusion writes the person into a prompt as two identifier words (``f l`` by default).
Their rows of the text encoder's embedding-layer output -- the token embedding plus the
position embedding -- are *replaced* by the two identity tokens, so the identity tokens carry
no position embedding of their own. Hosts that accept embedding vectors in the token stream
(ComfyUI, diffusers' ``inputs_embeds``) add the position embedding to whatever stands there, so
the vector put in the stream is ``identity_token - position_embedding[position]``.

Token streams here are lists of 77-token chunks, each token an int id or a tuple whose first
item is the id (ComfyUI's ``(id, weight, word_id)``); the rule finds the identifier's ids as
consecutive content tokens, also across a chunk boundary, so prompt weighting such as
``(f l:1.2)`` and punctuation (``f l,``) do not hide it. Every occurrence is replaced.

The rule is written once, here, host-free: :func:`identity_replacements` (check the identifier,
locate it, fail loudly when it is missing, compute what goes where). Each host has one thin
adapter that feeds it the host's token streams and applies the result: ComfyUI's token lists in
nodes/conditioning.py (one stream per text encoder, as the host's own PhotoMaker node iterates
them), transformers' embedding output in f2d/generate.py (which training also uses).

SD1.x's one text encoder, CLIP-L, is the only stream the identity tokens were trained for:
:data:`STREAM_WIDTHS` names it, and a host adapter refuses other streams (SD2's OpenCLIP-H,
SDXL's CLIP-G + CLIP-L) with :func:`unsupported_streams_message`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch

DEFAULT_IDENTIFIER = "f l"
STREAM_WIDTHS = {"l": 768}  # host stream name -> token width the identity tokens fit (SD1.x CLIP-L)
CLASS_PHRASE = "a person"  # what the person becomes in the class prompt


class IdentifierError(ValueError):
    """A prompt or identifier that the identity cannot be put into; says how to fix it."""

    __module__ = "f2d.tokens"


@dataclass(frozen=True)
class IdentifierPosition:
    """One occurrence: (chunk, index in chunk) of the first and of the last identifier token."""

    first: tuple[int, int]
    last: tuple[int, int]


def _token_id(token: Any) -> Any:
    return token[0] if isinstance(token, tuple) else token


def check_identifier(identifier: str) -> str:
    words = identifier.split()
    if len(words) != 2:
        raise IdentifierError(
            f"the identifier must be two words (Face2Diffusion makes two identity tokens), got '{identifier}'; "
            f"the official one is '{DEFAULT_IDENTIFIER}'"
        )
    return " ".join(words)


def identifier_ids(identifier_token_ids: Sequence[int], identifier: str) -> tuple[int, int]:
    """Validate the tokenizer's ids for the identifier (without start/end tokens)."""
    ids = tuple(int(i) for i in identifier_token_ids)
    if len(ids) != 2:
        raise IdentifierError(
            f"the identifier '{identifier}' is {len(ids)} tokens for this text encoder; it must be two "
            f"single-token words such as '{DEFAULT_IDENTIFIER}'"
        )
    return ids  # type: ignore[return-value]


def find_identifier(chunks: Sequence[Sequence[Any]], ids: tuple[int, int], special_ids: set[int]) -> list[IdentifierPosition]:
    """Every place where the two identifier ids follow each other as content tokens."""
    content = [
        (c, i, _token_id(t))
        for c, chunk in enumerate(chunks)
        for i, t in enumerate(chunk)
        if not torch.is_tensor(_token_id(t)) and not isinstance(_token_id(t), dict) and int(_token_id(t)) not in special_ids
    ]
    found = []
    k = 0
    while k + 1 < len(content):
        if content[k][2] == ids[0] and content[k + 1][2] == ids[1]:
            found.append(IdentifierPosition(content[k][:2], content[k + 1][:2]))
            k += 2
        else:
            k += 1
    return found


# English words of one letter: "a man", "I" -- not taken for a second person's identifier.
ONE_LETTER_WORDS = {"a", "i"}
TWO_PEOPLE_HINT = ("one F2D Text Encode / F2D Sampler holds one person (its identity tokens); for two people "
                   "give each their own prompt node with the same identifier and place them with Conditioning "
                   "Set Area (workflow 09_two_people)")


def other_identifiers(words: Sequence[str | None], identifier: str) -> list[str]:
    """Pairs of one-letter words other than the identifier, side by side ("g m" in "f l and g m"):
    most likely a second person's identifier, which stays plain text because one prompt node puts
    one identity into the prompt. ``words`` are the prompt's words in order as the tokenizer splits
    them (CLIP: letters, a digit, a run of punctuation), ``None`` for anything that is not text.
    The page's check (web/js/face2diffusion.js, otherIdentifiers) applies the same rule."""
    ids = check_identifier(identifier).lower().split()
    w = [x.lower() if x else None for x in words]
    k = 0
    while k + 1 < len(w):  # the identifier's own places, as find_identifier pairs them
        if w[k] == ids[0] and w[k + 1] == ids[1]:
            w[k] = w[k + 1] = None
            k += 2
        else:
            k += 1
    single = [x is not None and len(x) == 1 and "a" <= x <= "z" and x not in ONE_LETTER_WORDS for x in w]
    found = []
    k = 0
    while k + 1 < len(w):
        if single[k] and single[k + 1]:
            found.append(f"{w[k]} {w[k + 1]}")
            k += 2
        else:
            k += 1
    return found


def words_of(chunks: Sequence[Sequence[Any]], vocab: dict[int, str], special_ids: set[int]) -> list[str | None]:
    """The words of a token stream for a BPE vocabulary whose word-final pieces end in ``</w>``
    (CLIP's): pieces joined up to each word end; ``None`` for special tokens and vectors."""
    words: list[str | None] = []
    part = ""
    for chunk in chunks:
        for t in chunk:
            i = _token_id(t)
            piece = None if torch.is_tensor(i) or isinstance(i, dict) or int(i) in special_ids else vocab.get(int(i))
            if piece is None:
                if part:
                    words.append(part)
                    part = ""
                words.append(None)
            elif piece.endswith("</w>"):
                words.append(part + piece[:-4])
                part = ""
            else:
                part += piece
    if part:
        words.append(part)
    return words


def second_identifier_message(pairs: Sequence[str], identifier: str) -> str:
    shown = ", ".join(f"'{p}'" for p in pairs[:3])
    return (f"the prompt also holds {shown}, which looks like another person's identifier: it stays plain text "
            f"and only '{identifier}' gets the identity. {TWO_PEOPLE_HINT}.")


def missing_identifier_message(prompt: str, identifier: str) -> str:
    shown = prompt if len(prompt) <= 200 else prompt[:200] + "..."
    return (
        f"the prompt does not contain the identifier '{identifier}': \"{shown}\". Write it where the person "
        f"should appear, e.g. \"a photo of {identifier} smiling on a beach\" (as two separate words)."
    )


def stream_vectors(first: torch.Tensor, last: torch.Tensor, position_embedding: torch.Tensor,
                   positions: Sequence[IdentifierPosition]) -> list[tuple[tuple[int, int], torch.Tensor]]:
    """(where, vector) for each identifier token: the identity token minus the position
    embedding that the host will add at that place, in float32 on the table's device -- only the
    rows needed are read, and nothing is read back from a GPU (which would wait for queued work)."""
    pe = position_embedding.detach()
    places = [(where, token) for pos in positions for where, token in ((pos.first, first), (pos.last, last))]
    rows = pe.index_select(0, torch.tensor([where[1] for where, _ in places], device=pe.device)).float()
    return [(where, token.detach().to(pe.device, torch.float32).reshape(-1) - rows[k])
            for k, (where, token) in enumerate(places)]


def inject(chunks: Sequence[Sequence[Any]], vectors: Sequence[tuple[tuple[int, int], torch.Tensor]]) -> list[list[Any]]:
    """A copy of ``chunks`` with the tokens at the given places replaced by vectors (keeping a
    tuple's other fields, e.g. ComfyUI's weight and word id)."""
    out = [list(chunk) for chunk in chunks]
    for (c, i), vec in vectors:
        t = out[c][i]
        out[c][i] = (vec,) + tuple(t[1:]) if isinstance(t, tuple) else vec
    return out


def class_prompt(prompt: str, identifier: str = DEFAULT_IDENTIFIER, phrase: str = CLASS_PHRASE) -> str:
    """The prompt with the person's identifier replaced by a generic phrase ("a person"),
    for the steps before identity conditioning starts."""
    words = check_identifier(identifier).split()
    pattern = re.compile(r"(?<![\w])" + r"\s+".join(map(re.escape, words)) + r"(?![\w])", re.IGNORECASE)
    if not pattern.search(prompt):
        raise IdentifierError(missing_identifier_message(prompt, identifier))
    return pattern.sub(phrase, prompt)


def unsupported_streams_message(streams) -> str:
    names = ", ".join(f"'{k}'" for k in sorted(streams)) or "none"
    return (
        f"this CLIP is not SD1.x's: its text encoder streams are {names} (SD2 has 'h', SDXL 'g' and 'l'), "
        "and the Face2Diffusion identity tokens are made for SD1.x's single CLIP-L. "
        "Load an SD1.x checkpoint (SD1.4/1.5 or a fine-tune of them) and connect its CLIP."
    )


def embeddings_module(text_encoder: torch.nn.Module) -> torch.nn.Module:
    """A CLIP text encoder's embeddings module (token + position embedding), found by what it holds,
    which has survived every re-layout of transformers and ComfyUI's own CLIP."""
    for module in text_encoder.modules():
        if hasattr(module, "token_embedding") and hasattr(module, "position_embedding"):
            return module
    raise IdentifierError("the text encoder has no CLIP embeddings module (token + position embedding); "
                          "Face2Diffusion needs an SD1.x checkpoint (CLIP-L text encoder)")


def position_table(text_encoder: torch.nn.Module) -> torch.Tensor:
    """The position embedding table ``(positions, width)`` of a CLIP text encoder (read only)."""
    pe = embeddings_module(text_encoder).position_embedding
    return pe.weight if hasattr(pe, "weight") else pe


def identity_replacements(chunks: Sequence[Sequence[Any]], prompt: str, identifier: str,
                          identifier_token_ids: Sequence[int], special_ids: set[int],
                          first: torch.Tensor, last: torch.Tensor,
                          position_embedding: torch.Tensor | None = None) -> list[tuple[tuple[int, int], torch.Tensor]]:
    """The rule: (place, vector) for every identifier token of ``prompt``'s token ``chunks``.

    Checks the identifier (two words, two tokens for this tokenizer), finds every occurrence
    and raises :class:`IdentifierError` naming the prompt when there is none. ``first``/``last``
    are one person's identity tokens (768 each). Hosts that add the position embedding to what
    stands in the token list pass their ``position_embedding`` table, and the vector is
    compensated for it; hosts that replace rows after the embeddings layer pass ``None``.
    Computed in float32; the adapter casts to the host's dtype.
    """
    identifier = check_identifier(identifier)
    ids = identifier_ids(identifier_token_ids, identifier)
    positions = find_identifier(chunks, ids, special_ids)
    if not positions:
        raise IdentifierError(missing_identifier_message(prompt, identifier))
    if position_embedding is not None:
        return stream_vectors(first, last, position_embedding, positions)
    out = []
    for pos in positions:
        out += [(pos.first, first.float().reshape(-1)), (pos.last, last.float().reshape(-1))]
    return out
