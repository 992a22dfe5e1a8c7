"""The identifier rule of f2d.tokens on its own (no host, no tokenizer): what every adapter calls."""
import pytest
import torch

from f2d.tokens import DEFAULT_IDENTIFIER, IdentifierError, identity_replacements, inject

F, L, START, END = 500, 501, 49406, 49407
SPECIAL = {START, END}


def chunk(*ids, length=8):
    body = [START, *ids, END]
    return [(t, 1.0, 0 if t in SPECIAL else 1) for t in body + [END] * (length - len(body))]


def test_every_occurrence_is_replaced_with_position_compensation_keeping_weights():
    first, last = torch.full((768,), 1.0), torch.full((768,), 2.0)
    table = torch.arange(8, dtype=torch.float32)[:, None].expand(8, 768)
    chunks = [chunk(7, F, L, 9, F, L)]
    places = identity_replacements(chunks, "x f l y f l", DEFAULT_IDENTIFIER, [F, L], SPECIAL, first, last, table)
    assert [where for where, _ in places] == [(0, 2), (0, 3), (0, 5), (0, 6)]
    assert torch.equal(places[0][1], first - 2) and torch.equal(places[3][1], last - 6)
    out = inject(chunks, places)
    assert torch.equal(out[0][2][0], first - 2) and out[0][2][1:] == (1.0, 1)  # weight and word id kept
    assert out[0][1] == chunks[0][1]  # other tokens untouched


def test_without_a_position_table_the_tokens_go_in_as_they_are_and_keep_gradients():
    first = torch.ones(768, requires_grad=True)
    places = identity_replacements([[START, F, L, END]], "f l", DEFAULT_IDENTIFIER, [F, L], SPECIAL, first,
                                   torch.zeros(768))
    assert [w for w, _ in places] == [(0, 1), (0, 2)]
    places[0][1].sum().backward()
    assert first.grad is not None


def test_identifier_split_across_a_chunk_boundary_is_found():
    chunks = [chunk(1, 2, 3, 4, 5, F, length=8), chunk(L, 6)]
    places = identity_replacements(chunks, "...", DEFAULT_IDENTIFIER, [F, L], SPECIAL, torch.ones(768), torch.ones(768))
    assert [w for w, _ in places] == [(0, 6), (1, 1)]


@pytest.mark.parametrize("identifier, ids, message", [
    ("sks", [F], "must be two words"),
    ("f l", [F, L, 3], "is 3 tokens for this text encoder"),
])
def test_bad_identifiers_are_refused_with_the_fix(identifier, ids, message):
    with pytest.raises(IdentifierError, match=message):
        identity_replacements([chunk(F, L)], "f l", identifier, ids, SPECIAL, torch.ones(768), torch.ones(768))


def test_a_prompt_without_the_identifier_fails_naming_prompt_and_identifier():
    with pytest.raises(IdentifierError) as e:
        identity_replacements([chunk(L, F)], "l f backwards", DEFAULT_IDENTIFIER, [F, L], SPECIAL,
                              torch.ones(768), torch.ones(768))
    assert "'f l'" in str(e.value) and '"l f backwards"' in str(e.value)
