"""Expression vectors typed in by people: 64 numbers, checked where they enter.

The mapping network was trained on the expression coefficients of a 3D face model, which stay
within a few units of zero. Values far outside that range (1e30) or values that only look finite
as Python floats (1e39 is inf in float32) turn the identity tokens into inf/NaN and the picture
black, so they are refused here with the position and text of each offending number.
"""
from __future__ import annotations

import math

import torch

from .mapping import EXPRESSION_DIM

# 3DMM expression coefficients lie within about +-5; 100 leaves room for exaggeration while a
# typo (1e30, an extra digit run) is caught before it reaches the network.
MAX_ABS = 100.0
# 64 numbers as people paste them ("-1.2345678901234567e-01, " is 25 characters) fit in a few KB;
# anything longer is refused by its length alone, before any parsing: validation runs while
# ComfyUI handles the request, so parsing a pasted 40 MB would stall the whole server.
MAX_TEXT = 8192


class ExpressionError(ValueError):
    """An expression text that is not 64 sensible numbers; the message names each bad number."""

    __module__ = "f2d.expression"


def parse_expression(text: str, dim: int = EXPRESSION_DIM, max_abs: float = MAX_ABS) -> torch.Tensor:
    """``"0.1, -0.3 ..."`` -> a ``(1, dim)`` float32 tensor, or ExpressionError naming every problem."""
    if not isinstance(text, str):
        raise ExpressionError(f"expression values: expected text with {dim} numbers, got "
                              f"{'null' if text is None else type(text).__name__}. Type {dim} numbers separated by "
                              "commas or spaces, or leave the expression input unconnected.")
    if len(text) > MAX_TEXT:
        raise ExpressionError(
            f"expression values: the text is {len(text):,} characters long; an expression is exactly {dim} numbers "
            f"(at most {MAX_TEXT:,} characters). Type {dim} numbers between -{max_abs:g} and {max_abs:g} separated "
            "by commas or spaces, or leave the expression input unconnected for the unconditional expression."
        )
    # A pasted list ("[0.1, -0.3, ...]") reads the same as the bare numbers.
    parts = text.strip().removeprefix("[").removesuffix("]").replace(",", " ").split()
    bad, numbers = [], []
    for i, p in enumerate(parts):
        try:
            x = float(p)
        except ValueError:
            bad.append(f"#{i + 1} '{p[:20]}' is not a number")
            continue
        if not math.isfinite(x):
            bad.append(f"#{i + 1} '{p[:20]}' is not a finite number")
        elif abs(x) > max_abs:
            bad.append(f"#{i + 1} '{p[:20]}' is outside -{max_abs:g}..{max_abs:g}")
        numbers.append(x)
    problems = []
    if len(parts) != dim:
        problems.append(f"it needs exactly {dim} numbers, got {len(parts)}")
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        problems.append("; ".join(bad[:5]) + more)
    if problems:
        # A word such as "happy" is the expression a user wants, said in the wrong place.
        words = [p for p in parts if p.isalpha() and p.lower() not in ("nan", "inf", "infinity")]
        hint = (f"Expressions in words ('{words[0][:20]}') go in the prompt instead, e.g. \"f l smiling\" or "
                "\"f l looking surprised\"; this input takes numbers. ") if words else ""
        raise ExpressionError(
            f"expression values: {'; '.join(problems)}. {hint}Type {dim} numbers between -{max_abs:g} and {max_abs:g} "
            "separated by commas or spaces (expression coefficients are usually within -5..5), or leave the "
            "expression input unconnected for the unconditional expression."
        )
    return torch.tensor(numbers, dtype=torch.float32)[None]  # max_abs keeps every value finite in float32


def check_strength(strength) -> float:
    """The expression strength as a number in 0..1; NaN passes the host's min/max check (every
    comparison with NaN is false) and would otherwise surface as broken identity tokens."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        value = float("nan")
    if not (0.0 <= value <= 1.0):
        raise ExpressionError(f"strength is {strength!r}, not a number between 0 and 1: set strength to a value in 0..1 "
                              "(1 uses the expression fully, 0 ignores it)")
    return value
