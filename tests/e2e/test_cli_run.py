"""e2e tests of `jan run`, `jan ps` and `jan stop` against a real stack running a tiny real GGUF model
(tests/fakes/tiny_gguf.py: deterministic gibberish, fast), the CLI driven as a real process."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.stack import Stack
from tests.fakes.tiny_gguf import write_tiny_gguf
from tests.harness import CHAT_TEMPLATE, TINY_CHAT, process_stack

pytestmark = pytest.mark.e2e
pytest.importorskip("llama_cpp")

MODEL = TINY_CHAT
MAX_TOKENS = 16
# A second model whose answers take seconds (thousands of tokens), to stop one with Ctrl-C.
LONG_MODEL = "tiny/long"
LONG_CTX = 8192
REPO_ROOT = Path(__file__).resolve().parents[2]
# The CLI as a terminal's foreground job gets it: Ctrl-C raises KeyboardInterrupt. A suite started from a
# shell's background job (`cmd &`, as CI may run it) hands its children SIGINT ignored, and Python then
# installs no handler; the CLI's own Ctrl-C handling is what these tests are about, so restore it.
CLI_MAIN = (
    "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from cli.main import app; app()"
)
CLI_ENV = {
    "JAN_API_KEY": None,
    "JAN_URL": None,
    "COLUMNS": "250",
    "FORCE_COLOR": None,
    "TTY_COMPATIBLE": None,
    "NO_COLOR": "1",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own (overrides conftest's) with the tiny model imported as tiny/chat."""
    models = tmp_path_factory.mktemp("tiny")
    gguf = write_tiny_gguf(models / "tiny-chat.gguf", chat_template=CHAT_TEMPLATE)
    long_gguf = write_tiny_gguf(models / "tiny-long.gguf", chat_template=CHAT_TEMPLATE, n_ctx=LONG_CTX)
    env = {
        "JAN_IMPORT_ALLOWED_DIRS": str(models),
        "JAN_CATALOG_SEED_MODELS_DIR": "",
        "JAN_RUNNER_THREADS": "2",
    }
    with process_stack(tmp_path_factory.mktemp("janrun"), env) as s:
        resp = httpx.post(
            f"{s.url}/v1/models",
            json={
                "source_url": str(gguf),
                "id": MODEL,
                "parameters": {"ctx_len": 512, "max_tokens": MAX_TOKENS, "temperature": 0},
            },
        )
        assert resp.status_code == 201, resp.text
        resp = httpx.post(
            f"{s.url}/v1/models",
            json={
                "source_url": str(long_gguf),
                "id": LONG_MODEL,
                "parameters": {"ctx_len": LONG_CTX, "max_tokens": LONG_CTX - 64, "temperature": 0},
            },
        )
        assert resp.status_code == 201, resp.text
        yield s


# --- helpers ----------------------------------------------------------------------------------------------


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLI_ENV}
    env.update({k: v for k, v in CLI_ENV.items() if v is not None})
    return env


def jan(stack: Stack, *args: str, input: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Runs `jan ARGS` as a real process; its standard input is `input` (a pipe, so not a terminal)."""
    return subprocess.run(
        [sys.executable, "-c", CLI_MAIN, "--url", stack.url, *args],
        cwd=REPO_ROOT,
        env=cli_env(),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def failed(result: subprocess.CompletedProcess[str]) -> str:
    """Asserts an expected failure (exit 1, one `error: ...` line, no traceback); returns stderr."""
    assert result.returncode == 1, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.stderr.startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


def reference_answer(stack: Stack, messages: list[dict[str, str]], model: str = MODEL, **options: Any) -> str:
    """The model's (deterministic) answer through the non-streaming API, to compare the CLI's with."""
    resp = httpx.post(
        f"{stack.url}/v1/chat/completions",
        json={"model": model, "messages": messages, **options},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    content: str = resp.json()["choices"][0]["message"]["content"]
    assert content.strip()
    return content


def running(stack: Stack) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = httpx.get(f"{stack.url}/v1/running").json()["data"]
    return data


def table_row(out: str, first: str) -> list[str]:
    return next(line.split() for line in out.splitlines() if line.startswith(first + " "))


# --- jan run ----------------------------------------------------------------------------------------------


def test_run_with_a_prompt_answers_once_and_exits(stack: Stack) -> None:
    result = ok(jan(stack, "run", MODEL, "the cat"))
    assert result.stdout.strip()
    # The streamed pieces make up exactly the answer the API gives (greedy, deterministic).
    expected = reference_answer(stack, [{"role": "user", "content": "the cat"}])
    assert result.stdout == expected + "\n"
    # Stats go to stderr: the token count the server sent, and the speed.
    assert f"{MAX_TOKENS} tokens" in result.stderr and "tok/s" in result.stderr, result.stderr
    assert "cut at the token limit" in result.stderr  # the tiny model never stops by itself
    assert [r["model_id"] for r in running(stack)] == [MODEL]


def test_run_reads_piped_stdin_with_a_system_prompt_and_options(stack: Stack) -> None:
    result = ok(
        jan(stack, "run", MODEL, "--system", "be brief", "--max-tokens", "5", input="hello there\nfriend\n")
    )
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there\nfriend"},
    ]
    assert result.stdout == reference_answer(stack, messages, max_tokens=5) + "\n"
    assert "5 tokens" in result.stderr, result.stderr


def test_run_sends_stdin_then_the_prompt_argument(stack: Stack) -> None:
    result = ok(jan(stack, "run", MODEL, "the dog", input="a story\n"))
    expected = reference_answer(stack, [{"role": "user", "content": "a story\n\nthe dog"}])
    assert result.stdout == expected + "\n"


def test_run_errors(stack: Stack) -> None:
    err = failed(jan(stack, "run", "no/such", "hi"))
    assert "no/such" in err and len(err.strip().splitlines()) == 1
    err = failed(jan(stack, "run", MODEL, input="  \n"))
    assert "nothing to send" in err
    err = failed(jan(stack, "run", MODEL, "--keep-alive", "soon", "hi"))
    assert "keep_alive" in err and "soon" in err


# --- jan ps / jan stop ------------------------------------------------------------------------------------


def test_ps_lists_the_running_model(stack: Stack) -> None:
    ok(jan(stack, "run", MODEL, "--keep-alive", "10m", "hi"))
    out = ok(jan(stack, "ps")).stdout
    assert out.splitlines()[0].split() == ["MODEL", "RUNNER", "ENGINE", "MEMORY", "ACTIVE/QUEUED", "UNTIL"]
    row = table_row(out, MODEL)
    assert row[1:3] == ["local", "llamacpp"], out
    assert row[4] in ("MiB", "KiB", "GiB") and float(row[3]) > 0, out
    assert row[5] == "0/0", out
    # The keep-alive given to `jan run` applies: unloads in about 10 minutes.
    assert row[6] == "in" and row[7] in ("10m", "9m"), out

    ok(jan(stack, "run", MODEL, "--keep-alive", "-1", "hi"))
    assert table_row(ok(jan(stack, "ps")).stdout, MODEL)[-1] == "never"


def test_stop_then_ps_says_nothing_runs(stack: Stack) -> None:
    if not running(stack):
        ok(jan(stack, "run", MODEL, "hi"))
    assert ok(jan(stack, "stop", MODEL)).stdout.strip() == f"stopped {MODEL}"
    assert running(stack) == []
    assert ok(jan(stack, "ps")).stdout.strip() == "no model is running"
    assert ok(jan(stack, "stop", MODEL)).stdout.strip() == f"{MODEL} was not running"
    assert "no/such" in failed(jan(stack, "stop", "no/such"))


# --- the interactive chat (on a pseudo-terminal) ------------------------------------------------------------


def test_interactive_chat_keeps_the_conversation_and_clear_resets_it(stack: Stack) -> None:
    """stdin on a pseudo-terminal: the prompt loop. Two messages, /clear, the first message again, EOF."""
    main, tty = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", CLI_MAIN, "--url", stack.url, "run", MODEL],
            cwd=REPO_ROOT,
            env=cli_env(),
            stdin=tty,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(tty)
        # The terminal holds the lines until the loop reads them; Ctrl-D on an empty line is the EOF.
        os.write(main, b"the cat\nthe cat\n/clear\nthe cat\n\x04")
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if select.select([main], [], [], 0.1)[0]:
                try:
                    os.read(main, 4096)  # the terminal's echo of what was typed
                except OSError:  # the process closed the terminal: it ended
                    break
        stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(main)
    assert proc.returncode == 0, f"{stdout}\n{stderr}"
    assert "Traceback" not in stderr, stderr
    prompts = stdout.split(">>> ")
    assert len(prompts) == 6, stdout  # 4 prompts answered (one by /clear), then the one that got EOF
    first, second, cleared, third = (p.removesuffix("\n") for p in prompts[1:5])
    assert cleared == "" and "cleared the conversation" in stderr
    user = {"role": "user", "content": "the cat"}
    assert first == reference_answer(stack, [user])
    # The second answer follows the first exchange, so the whole history was sent.
    assert second == reference_answer(stack, [user, {"role": "assistant", "content": first}, user])
    assert second != first
    # After /clear the same message gets the same answer as at the start.
    assert third == first
    assert stderr.count(f"{MAX_TOKENS} tokens") == 3, stderr


def test_ctrl_c_stops_the_answer_on_the_server_and_returns_to_the_prompt(stack: Stack) -> None:
    """Ctrl-C (SIGINT) while an answer of thousands of tokens streams: the stream is closed, the runner
    stops generating at once, and the chat goes back to its prompt."""
    main, tty = os.openpty()
    args = ["--url", stack.url, "run", LONG_MODEL, "--keep-alive", "5m"]
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI_MAIN, *args],
        cwd=REPO_ROOT,
        env=cli_env(),
        stdin=tty,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    os.close(tty)
    try:
        assert proc.stdout is not None
        out = proc.stdout.fileno()
        os.write(main, b"tell me a very long story\n")
        seen, deadline = b"", time.monotonic() + 30
        # Wait for the answer to have begun (some bytes after the first prompt).
        while len(seen.removeprefix(b">>> ")) < 20:
            assert time.monotonic() < deadline and proc.poll() is None, seen
            if select.select([out], [], [], 0.1)[0]:
                seen += os.read(out, 4096)
            if select.select([main], [], [], 0)[0]:
                os.read(main, 4096)  # the echo
        assert [r["active"] for r in running(stack) if r["model_id"] == LONG_MODEL] == [1]
        proc.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        # The runner no longer works on it: the generation was cancelled, not run to its end.
        while any(r["active"] for r in running(stack) if r["model_id"] == LONG_MODEL):
            assert time.monotonic() - interrupted < 5, running(stack)
            time.sleep(0.05)
        os.write(main, b"/?\n/bye\n")
        while proc.poll() is None and time.monotonic() < deadline:
            if select.select([main], [], [], 0.1)[0]:
                try:
                    os.read(main, 4096)
                except OSError:
                    break
        rest, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    stdout, stderr = (seen + rest).decode(), err.decode()
    assert proc.returncode == 0, f"{stdout}\n{stderr}"
    assert "(answer stopped)" in stderr and "Traceback" not in stderr, stderr
    prompts = stdout.split(">>> ")
    assert len(prompts) == 4, stdout  # the stopped answer, then back at the prompt for /? and /bye
    assert 0 < len(prompts[1].split()) < LONG_CTX // 2, "the answer was not stopped early"
    assert prompts[2:] == ["", ""], stdout
    assert "/clear forgets the conversation" in stderr, stderr
