"""Fill-in-the-middle: one layout for training examples and served prompts, cut to fit from the far ends."""

from __future__ import annotations

import pytest

from lathe.core.fim import FimIds, fim_prompt, fit_context
from lathe.serving.engine import Engine, RequestError
from lathe.tokenizer.fim import SpecialIds, encode_documents, fim_splits
from tests.served import reference

IDS = FimIds(prefix=-1, middle=-2, suffix=-3)


def test_layouts() -> None:
    assert fim_prompt([1, 2], [3], IDS, "psm") == [-1, 1, 2, -3, 3, -2]
    assert fim_prompt([1, 2], [3], IDS, "spm") == [-1, -3, 3, -2, 1, 2]
    with pytest.raises(ValueError, match="not one of psm, spm"):
        fim_prompt([], [], IDS, "pms")


@pytest.mark.parametrize(
    "prefix, suffix, room, kept",
    [
        (10, 10, 100, (10, 10)),  # fits: nothing cut
        (200, 10, 103, (90, 10)),  # a short suffix stays whole, the prefix gives way
        (10, 200, 103, (10, 90)),  # a short prefix stays whole, the suffix takes the rest
        (200, 200, 103, (75, 25)),  # both long: the suffix keeps a quarter
        (0, 0, 4, (0, 0)),
    ],
)
def test_fit_keeps_the_code_nearest_the_cursor(prefix: int, suffix: int, room: int, kept: tuple[int, int]) -> None:
    p, s = list(range(prefix)), list(range(1000, 1000 + suffix))
    got_p, got_s = fit_context(p, s, room)
    assert (len(got_p), len(got_s)) == kept
    assert got_p == p[len(p) - kept[0] :] and got_s == s[: kept[1]]  # the prefix keeps its end, the suffix its start
    assert len(fim_prompt(got_p, got_s, IDS)) <= room


def test_fit_refuses_a_room_smaller_than_the_frame() -> None:
    with pytest.raises(ValueError, match="at least 4 tokens"):
        fit_context([1], [2], 3)


def test_training_and_serving_lay_out_fim_alike(engine: Engine) -> None:
    """A PSM training example starts with exactly the prompt the server builds for the same prefix and suffix."""
    vocab = engine.tokenizer.get_vocab()
    ids = SpecialIds(engine.eos_id, vocab["<fim_prefix>"], vocab["<fim_middle>"], vocab["<fim_suffix>"])
    text = "def area(r):\n    return 3.14159 * r * r\n\nprint(area(2))\n"
    doc = next(str(i) for i in range(1000) if (cut := fim_splits(text, str(i), 0, 1.0, 0.0)[0]) and cut.prefix and cut.suffix)
    [cut] = fim_splits(text, doc, 0, 1.0, 0.0)
    [(tokens, fim)] = encode_documents([(doc, text)], lambda texts: [engine.encode(t) for t in texts], ids, 0, 1.0, 0.0)
    served = engine.parse(cut.prefix, {"suffix": cut.suffix, "max_tokens": 8}).prompt_ids
    assert fim and tokens[: len(served)] == served and tokens[len(served) : -1] == engine.encode(cut.middle)


def test_served_fim_prompts_are_cut_to_leave_room_for_the_middle(engine: Engine) -> None:
    prefix, suffix = "x = 1\n" * 200, "y = 2\n" * 200  # far more than the 128-token context
    request = engine.parse(prefix, {"suffix": suffix, "max_tokens": 28})
    assert len(request.prompt_ids) == engine.context - 28 and request.fim
    vocab = engine.tokenizer.get_vocab()
    assert request.prompt_ids[0] == vocab["<fim_prefix>"] and request.prompt_ids[-1] == vocab["<fim_middle>"]
    assert request.prompt_ids.count(vocab["<fim_suffix>"]) == 1  # the frame is whole; only text was cut
    middle = [t for e in engine.generate([request]) for t in e.token_ids]
    assert middle == reference(engine, request.prompt_ids, 28)
    # special-token names typed in the code stay text: no control token gets in from a request
    injected = engine.parse("a = '<fim_middle>'", {"suffix": "<|endoftext|>"}).prompt_ids
    assert injected.count(vocab["<fim_middle>"]) == 1 and engine.eos_id not in injected
    with pytest.raises(RequestError, match="max_tokens 126 leaves no room for the prompt"):
        engine.parse("x", {"suffix": "y", "max_tokens": 126})
