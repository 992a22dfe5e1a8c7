"""Messages for two mistakes a new user makes (issue 21, items 18 and 19), through the real nodes
on a real ComfyUI CLIP: an expression typed as a word, and a second person's identifier written
into one prompt."""
from __future__ import annotations

import logging

import pytest
import torch

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def clip(f2d_nodes, tmp_path_factory):
    import comfy.sd

    from f2d_testkit import formula_clip_state_dict

    return comfy.sd.load_text_encoder_state_dicts(
        [formula_clip_state_dict()], embedding_directory=[str(tmp_path_factory.mktemp("embeddings"))],
        clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION, model_options={"dtype": torch.float32})


@pytest.fixture(scope="module")
def id_tokens(f2d_nodes, reference):
    from f2d.identity import IdentityTokens

    return IdentityTokens(reference["mapping.first.null_exp"], reference["mapping.last.null_exp"])


@pytest.mark.parametrize("word", ["happy", "smiling, angry"])
def test_an_expression_in_words_points_to_the_prompt(f2d_nodes, word):
    with pytest.raises(ValueError) as e:
        f2d_nodes.F2DExpressionVector.execute(word)
    text = str(e.value)
    assert "go in the prompt" in text and '"f l smiling"' in text, text
    assert f"'{word.split(',')[0]}'" in text  # the word the user typed


def test_a_number_typo_gets_no_prompt_hint(f2d_nodes):
    with pytest.raises(ValueError) as e:
        f2d_nodes.F2DExpressionVector.execute("0.1 0.2")
    assert "go in the prompt" not in str(e.value)


SECOND_PERSON = [
    ("a photo of f l and g m at a party", ["g m"]),
    ("(f l:1.1) talking to (g m:1.2)", ["g m"]),
    ("f l, x y and p q", ["x y", "p q"]),
    ("a photo of f l", []),
    ("f l talking to f l in a mirror", []),  # the same person twice: one identifier
    ("a photo of f l with a b c", ["b c"]),  # "a" is a word
    ("f f l", []), ("f l l", []),
    ("f l in the year 2 0", []),  # digits are no identifier
    ("f l and g-m", []), ("f l and gm", []),  # not two one-letter words
]


@pytest.mark.parametrize("text,pairs", SECOND_PERSON, ids=[t for t, _ in SECOND_PERSON])
def test_a_second_identifier_is_named_with_the_two_people_route(f2d_nodes, clip, id_tokens, caplog, text, pairs):
    with caplog.at_level(logging.WARNING):
        (cond,) = f2d_nodes.F2DTextEncode.execute(clip, id_tokens, text, "f l", 0.0, 1.0).args
    assert torch.isfinite(cond[0][0]).all()  # it still runs: "g m" may be meant as text
    said = [r.getMessage() for r in caplog.records if "another person's identifier" in r.getMessage()]
    if not pairs:
        assert said == []
        return
    assert len(said) == 1, said
    for p in pairs:
        assert f"'{p}'" in said[0]
    assert "Conditioning Set Area" in said[0] and "09_two_people" in said[0]
