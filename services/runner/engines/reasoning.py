"""Thinking text of reasoning models, split from the answer while it streams.

Known markers (the opening, the closing): `<think>`/`</think>` (DeepSeek-R1 and its distills, Qwen3,
QwQ, Phi-4 reasoning, ...), `<thinking>`/`</thinking>`, `<|START_THINKING|>`/`<|END_THINKING|>`
(Command A reasoning), `[THINK]`/`[/THINK]` (Magistral), `<seed:think>`/`</seed:think>` (Seed-OSS).
Many templates open the thinking block themselves at the end of the prompt (DeepSeek-R1's ends with
`<think>\\n`): then the output starts inside it, and only the closing marker appears.

Text that might be the start of a marker is held back until it is known not to be one.
"""

from __future__ import annotations

from services.common.chat_template import THINKING_MARKERS as MARKERS


def opened_by_prompt(prompt: str) -> tuple[str, str] | None:
    """The marker pair whose opening ends the rendered prompt (the model starts inside its thinking)."""
    tail = prompt.rstrip()
    for pair in MARKERS:
        if tail.endswith(pair[0]):
            return pair
    return None


class ReasoningSplitter:
    """Feeds of generated text in, (reasoning, content) pieces out."""

    def __init__(self, inside: tuple[str, str] | None = None) -> None:
        self._inside = inside  # the pair whose block we are in, or None when outside
        self._held = ""
        # Newlines right after a marker are dropped (templates put one there), even in a later piece.
        self._strip = inside is not None

    def feed(self, text: str) -> tuple[str, str]:
        reasoning: list[str] = []
        content: list[str] = []
        buffer = self._held + text
        self._held = ""
        while buffer:
            if self._strip:
                buffer = buffer.lstrip("\n")
                if not buffer:
                    break
                self._strip = False
            if self._inside is not None:
                close = self._inside[1]
                at = buffer.find(close)
                if at >= 0:
                    reasoning.append(buffer[:at])
                    buffer = buffer[at + len(close) :]
                    self._inside, self._strip = None, True
                    continue
                keep = _partial(buffer, (close,))
                reasoning.append(buffer[: len(buffer) - keep])
                self._held = buffer[len(buffer) - keep :]
                break
            found = [(buffer.find(pair[0]), pair) for pair in MARKERS if pair[0] in buffer]
            if found:
                at, pair = min(found, key=lambda f: f[0])
                content.append(buffer[:at])
                buffer = buffer[at + len(pair[0]) :]
                self._inside, self._strip = pair, True
                continue
            keep = _partial(buffer, tuple(pair[0] for pair in MARKERS))
            content.append(buffer[: len(buffer) - keep])
            self._held = buffer[len(buffer) - keep :]
            break
        return "".join(reasoning), "".join(content)

    def flush(self) -> tuple[str, str]:
        """What is still held back, at the end of the output (an unclosed block stays reasoning)."""
        held, self._held = self._held, ""
        return (held, "") if self._inside is not None else ("", held)


def _partial(text: str, markers: tuple[str, ...]) -> int:
    """The length of the longest end of `text` that is the start of one of `markers`."""
    longest = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:n]):
                longest = n
                break
    return longest
