"""What a model can do (`metadata.capabilities`): one pure rule over its object's parameters, its binaries'
names and what their GGUF headers say, so every service that asks gets the same answer.

The names follow Ollama's (`/api/show`), except `reasoning` for its `thinking`, Jan's word for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.common.chat_template import knows_thinking, prompt_source, takes_tools
from services.common.gguf_plan import is_projector

COMPLETION = "completion"  # it generates text (every model but an embedding-only one)
EMBEDDING = "embedding"  # it is an embedding model
VISION = "vision"  # it reads images: a vision projector among its binaries
TOOLS = "tools"  # its chat template renders tool definitions
REASONING = "reasoning"  # its chat template knows thinking blocks
CAPABILITIES = (COMPLETION, EMBEDDING, VISION, TOOLS, REASONING)

# llama.cpp's encoder-only architectures: they embed text and cannot generate it.
ENCODER_ARCHITECTURES = frozenset(
    "bert modern-bert nomic-bert nomic-bert-moe neo-bert jina-bert-v2 jina-bert-v3 t5encoder".split()
)
# llama.cpp's pooling types (llama_pooling_type) that make one vector of a text: mean, cls, last. A header
# that declares any pooling (rank, too: a reranker's score) is not a text generator's.
_EMBEDDING_POOLING = frozenset({1, 2, 3})
PROJECTOR_ARCHITECTURE = "clip"


@dataclass(frozen=True)
class HeaderTraits:
    """What one GGUF header says that a model's capabilities depend on (the template itself is not kept)."""

    architecture: str = ""
    pooling: int = 0  # `<arch>.pooling_type`; 0 when absent (llama.cpp's "none")
    vision_encoder: bool | None = None  # `clip.has_vision_encoder`; None when the header does not say
    tools: bool = False  # its `tokenizer.chat_template` takes tools
    thinking: bool = False  # ... knows thinking blocks

    @classmethod
    def of(cls, facts: Mapping[str, Any]) -> HeaderTraits:
        """The traits of a header's scalar and string values (services/common/gguf.py)."""
        architecture = facts.get("general.architecture")
        architecture = architecture if isinstance(architecture, str) else ""
        pooling = facts.get(f"{architecture}.pooling_type") if architecture else None
        vision = facts.get("clip.has_vision_encoder")
        template = facts.get("tokenizer.chat_template")
        template = template if isinstance(template, str) else None
        return cls(
            architecture=architecture,
            pooling=pooling if isinstance(pooling, int) and not isinstance(pooling, bool) else 0,
            vision_encoder=bool(vision) if isinstance(vision, bool | int) else None,
            tools=takes_tools(template),
            thinking=knows_thinking(template),
        )


def is_set(value: Any) -> bool:
    """A model object's boolean parameter as written by hand: true, or a string such as "true", "1", "yes"."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def derive_capabilities(
    parameters: Mapping[str, Any], binaries: Sequence[tuple[str, HeaderTraits | None]]
) -> list[str]:
    """A model's capabilities, in CAPABILITIES order, from its parameters and its binaries: (name, the
    traits of its header, or None where it was not read: not present, not a GGUF). What the headers would
    add is left out until they are read; what names and parameters say is known before."""
    model = next(
        (h for _, h in binaries if h is not None and h.architecture not in ("", PROJECTOR_ARCHITECTURE)), None
    )
    architecture, pooling = (model.architecture, model.pooling) if model is not None else ("", 0)
    encoder = architecture in ENCODER_ARCHITECTURES
    embedding = is_set(parameters.get("embedding")) or encoder or pooling in _EMBEDDING_POOLING
    # An encoder or a header that pools (a reranker's too) makes no text, nor a model told to embed only.
    completion = not encoder and not pooling and not (embedding and is_set(parameters.get("embedding_only")))
    vision = any(
        (h is not None and h.vision_encoder)
        or (is_projector(name) and (h is None or h.vision_encoder is not False))
        for name, h in binaries
    )
    tools = thinking = False
    source = prompt_source(parameters)
    if source == "chat_template":
        template = parameters["chat_template"]
        template = template if isinstance(template, str) else None
        tools, thinking = takes_tools(template), knows_thinking(template)
    elif source == "gguf" and model is not None:
        tools, thinking = model.tools, model.thinking
    found = {
        COMPLETION: completion,
        EMBEDDING: embedding,
        VISION: vision and completion,
        TOOLS: tools and completion,
        REASONING: thinking and completion,
    }
    return [name for name in CAPABILITIES if found[name]]
