"""Thinking text split from the answer while it streams, whatever the pieces' boundaries."""

from __future__ import annotations

import pytest

from services.runner.engines.reasoning import MARKERS, ReasoningSplitter, opened_by_prompt


def split(text: str, size: int, inside: tuple[str, str] | None = None) -> tuple[str, str]:
    splitter = ReasoningSplitter(inside)
    reasoning, content = "", ""
    for i in range(0, len(text), size):
        r, c = splitter.feed(text[i : i + size])
        reasoning, content = reasoning + r, content + c
    r, c = splitter.flush()
    return reasoning + r, content + c


@pytest.mark.parametrize("pair", MARKERS)
@pytest.mark.parametrize("size", [1, 2, 3, 5, 100])
def test_thinking_is_split_from_the_answer_at_any_piece_size(pair: tuple[str, str], size: int) -> None:
    text = f"{pair[0]}\nLet me think: 2+2.{pair[1]}\n\nThe answer is 4."
    assert split(text, size) == ("Let me think: 2+2.", "The answer is 4.")


@pytest.mark.parametrize("size", [1, 4, 100])
def test_a_prompt_that_opens_the_block_starts_inside_it(size: int) -> None:
    pair = opened_by_prompt("<|User|>hi<|Assistant|><think>\n")
    assert pair == ("<think>", "</think>")
    assert split("hmm, a greeting.</think>Hello!", size, pair) == ("hmm, a greeting.", "Hello!")


def test_text_without_markers_is_all_content_and_lookalikes_are_released() -> None:
    assert split("a < b and [TH is not [THINK", 1) == ("", "a < b and [TH is not [THINK")
    assert split("<thin", 1) == ("", "<thin")


def test_an_unclosed_block_stays_reasoning() -> None:
    assert split("<think>still thinking when the tokens ran out", 3) == (
        "still thinking when the tokens ran out",
        "",
    )


def test_no_prompt_marker_means_outside() -> None:
    assert opened_by_prompt("<start_of_turn>model\n") is None
