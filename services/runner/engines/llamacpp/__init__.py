"""The llama.cpp engine: `engine` (the Engine interface, prompts), `batcher` (continuous batching in one
context), `gguf` (header facts for the memory estimate)."""

from services.runner.engines.llamacpp.engine import LlamaCppEngine

__all__ = ["LlamaCppEngine"]
