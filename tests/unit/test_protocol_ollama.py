"""Ollama's dialect as pure functions (gateway/protocol/ollama.py): names, options, chat and generate
bodies to the runner's GenerateRequest (what would not be honoured refused by name), and the runner's
answers back to Ollama's chunks, done reasons, listings and embeddings."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest

from gateway.errors import APIError
from gateway.protocol import ollama as protocol
from gateway.protocol.answer import ToolCall
from gateway.protocol.common import ImageRef, Unsupported
from jan.downloader.v1 import downloader_service_pb2 as downloader_pb
from jan.model.v1 import model_pb2
from jan.runner.v1 import runner_service_pb2 as runner_pb

MODEL = "tiny/chat"


def chat_with_images(**fields: Any) -> protocol.Translated:
    body = protocol.ChatIn.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}
    )
    return protocol.chat_request(body, MODEL)


def generate_with_images(**fields: Any) -> protocol.Translated:
    return protocol.generate_request(protocol.GenerateIn.model_validate({"model": MODEL, **fields}), MODEL)


def chat(**fields: Any) -> tuple[runner_pb.GenerateRequest, protocol.Options]:
    request, _, opts = chat_with_images(**fields)
    return request, opts


def generate(**fields: Any) -> tuple[runner_pb.GenerateRequest, protocol.Options]:
    request, _, opts = generate_with_images(**fields)
    return request, opts


def refused(call: Any, **fields: Any) -> str:
    with pytest.raises(Unsupported) as err:
        call(**fields)
    return err.value.param


def test_names_drop_latest_and_hugging_face_names_pick_a_quant() -> None:
    assert protocol.parse_name(" tiny/chat:latest ") == MODEL
    assert protocol.parse_name("hf.co/acme/Tiny-GGUF") == protocol.HfName("acme", "Tiny-GGUF", "Q4_K_M")
    ref = protocol.parse_name("huggingface.co/acme/Tiny-GGUF:q8_0")
    assert ref == protocol.HfName("acme", "Tiny-GGUF", "Q8_0") and str(ref) == "hf.co/acme/Tiny-GGUF:Q8_0"
    for bad in ("", "hf.co/acme", "hf.co/a/b/c"):
        with pytest.raises(Unsupported) as err:
            protocol.parse_name(bad, field="source")
        assert err.value.param == "source"


def test_pick_the_imported_object_of_a_quant() -> None:
    def imported(model_id: str, quant: str) -> model_pb2.Model:
        meta = orjson.dumps({"quantization": quant}).decode()
        return model_pb2.Model(
            id=model_id, source_url="https://huggingface.co/acme/Tiny-GGUF", metadata_json=meta
        )

    models = [imported("t/q4", "q4_k_m"), imported("t/q8", "Q8_0"), model_pb2.Model(id="other/x")]
    assert protocol.pick_hf_model(models, protocol.HfName("acme", "tiny-gguf", "Q8_0"), "n").id == "t/q8"
    with pytest.raises(APIError) as missing:
        protocol.pick_hf_model(models, protocol.HfName("acme", "Tiny-GGUF", "Q2_K"), "n")
    assert missing.value.code == "quantization_not_found" and "Q4_K_M, Q8_0" in missing.value.message
    with pytest.raises(APIError) as absent:
        protocol.pick_hf_model(models, protocol.HfName("acme", "Else", "Q2_K"), "n")
    assert absent.value.status == 404 and absent.value.code == "model_not_found"


def test_options_map_onto_sampling_and_num_ctx_onto_the_load() -> None:
    opts = protocol.options(
        protocol.OptionsIn.model_validate(
            {"num_ctx": 1024, "num_predict": 5, "temperature": 0.25, "top_k": 3, "stop": ["\n"], "seed": 9}
        )
    )
    assert opts.num_ctx == 1024
    s = opts.sampling
    assert (s.max_tokens, s.temperature, s.top_k, list(s.stop), s.seed) == (5, 0.25, 3, ["\n"], 9)
    assert (
        protocol.options(protocol.OptionsIn(num_predict=-1)).sampling.max_tokens == protocol.UNLIMITED_TOKENS
    )
    assert not protocol.options(protocol.OptionsIn(num_predict=0)).sampling.HasField("max_tokens")  # unset
    # Ollama's ignored options, and neutral values of unsupported ones, change nothing.
    neutral = {"numa": True, "mirostat": 0, "mirostat_tau": 5.0, "typical_p": 1.0, "repeat_last_n": 64}
    assert protocol.options(protocol.OptionsIn.model_validate(neutral)).sampling == runner_pb.Sampling()
    # Embeddings take no sampling options; num_ctx is a load.
    assert protocol.options(protocol.OptionsIn(num_ctx=64), sampling=False).num_ctx == 64


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"mirostat": 2}, "options.mirostat"),
        ({"num_gpu": 1}, "options.num_gpu"),
        ({"typical_p": 0.5}, "options.typical_p"),
        ({"frobnicate": 1}, "options.frobnicate"),
    ],
)
def test_an_option_that_would_not_be_honoured_is_refused_by_name(options: dict[str, Any], param: str) -> None:
    assert refused(chat, options=options) == param


def test_embeddings_refuse_sampling_options() -> None:
    with pytest.raises(Unsupported) as err:
        protocol.options(protocol.OptionsIn(temperature=0.1), sampling=False)
    assert err.value.param == "options.temperature"


def test_a_chat_body_maps_onto_the_runners_request() -> None:
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    request, opts = chat(
        format="json", keep_alive="1m", logprobs=True, top_logprobs=2, tools=[weather], think=True
    )
    assert request.model_id == MODEL and [m.content for m in request.chat.messages] == ["hi"]
    assert request.constraint == runner_pb.Constraint(json_object=True)
    assert (request.keep_alive_s, request.logprobs, request.top_logprobs) == (60, True, 2)
    assert [t.name for t in request.tools] == ["get_weather"] and opts.num_ctx is None
    assert request.reasoning == runner_pb.REASONING_MODE_SEPARATE  # thinking comes back in `thinking`
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert json.loads(chat(format=schema)[0].constraint.json_schema) == schema


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"truncate": True}, "truncate"),
        ({"shift": True}, "shift"),
        ({"think": "high"}, "think"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"format": "yaml"}, "format"),
        ({"keep_alive": "later"}, "keep_alive"),
        ({"extra_field": 1}, "extra_field"),
        ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools.0.type"),
        ({"messages": [{"role": "assistant", "content": "x", "images": ["aGk="]}]}, "messages.0.images"),
        ({"messages": [{"role": "user", "content": "x", "tool_name": "f"}]}, "messages.0.tool_name"),
        (
            {"messages": [{"role": "user", "tool_calls": [{"function": {"name": "f"}}]}]},
            "messages.0.tool_calls",
        ),
    ],
)
def test_a_chat_field_that_would_not_be_honoured_is_refused_by_name(
    fields: dict[str, Any], param: str
) -> None:
    assert refused(chat, **fields) == param


def test_generate_puts_the_prompt_in_the_template_unless_raw() -> None:
    templated, _ = generate(prompt="the cat", system="be brief")
    assert [(m.role, m.content) for m in templated.chat.messages] == [
        ("system", "be brief"),
        ("user", "the cat"),
    ]
    raw, _ = generate(prompt="the cat", raw=True)
    assert raw.text == "the cat" and raw.reasoning == runner_pb.REASONING_MODE_INLINE
    for fields, param in (
        ({"raw": True, "system": "x"}, "system"),
        ({"suffix": "end"}, "suffix"),
        ({"template": "{{ .Prompt }}"}, "template"),
        ({"context": [1, 2]}, "context"),
        ({"raw": True, "images": ["aGk="]}, "images"),
    ):
        assert refused(generate, prompt="p", **fields) == param


def test_tool_results_are_paired_with_the_calls_they_answer() -> None:
    messages = [
        protocol.MessageIn(role="user", content="?"),
        protocol.MessageIn.model_validate(
            {
                "role": "assistant",
                "tool_calls": [
                    {"function": {"name": "a", "arguments": {"x": 1}}},
                    {"function": {"name": "b", "arguments": {}}},
                ],
            }
        ),
        protocol.MessageIn(role="tool", content="B", tool_name="b"),
        protocol.MessageIn(role="tool", content="A", tool_name="a"),
    ]
    out, _ = protocol.chat_messages(messages)
    assert [(c.id, c.name, json.loads(c.arguments)) for c in out[1].tool_calls] == [
        ("call_1_0", "a", {"x": 1}),
        ("call_1_1", "b", {}),
    ]
    assert [(m.tool_call_id, m.name) for m in out[2:]] == [("call_1_1", "b"), ("call_1_0", "a")]


def test_keep_alive_zero_unloads_and_embed_inputs() -> None:
    assert (
        protocol.unloads(0)
        and protocol.unloads("0s")
        and not protocol.unloads(None)
        and not protocol.unloads("5m")
    )
    assert protocol.embed_inputs(protocol.EmbedIn(model=MODEL, input="")) == []  # loads the model only
    assert protocol.embed_inputs(protocol.EmbedIn(model=MODEL, input=["a", "b"])) == ["a", "b"]
    with pytest.raises(Unsupported) as err:
        protocol.embed_inputs(protocol.EmbedIn(model=MODEL, input="a", truncate=True))
    assert err.value.param == "truncate"


def test_chunks_and_the_done_reason() -> None:
    chunk = protocol.chat_chunk(MODEL, "Hi", thinking="hm", tool_calls=[{"function": {"name": "f"}}])
    assert chunk["message"] == {
        "role": "assistant",
        "content": "Hi",
        "thinking": "hm",
        "tool_calls": [{"function": {"name": "f"}}],
    }
    assert chunk["done"] is False and chunk["created_at"].endswith("Z")
    assert protocol.generate_chunk(MODEL, "Hi")["response"] == "Hi"
    # Ollama says "stop" for a stop and for tool calls, "length" when cut.
    assert protocol.done_fields(runner_pb.FINISH_REASON_LENGTH, {})["done_reason"] == "length"
    assert protocol.done_fields(runner_pb.FINISH_REASON_TOOL_CALLS, {"eval_count": 3}) == {
        "done": True,
        "done_reason": "stop",
        "eval_count": 3,
    }


def test_the_clock_reports_durations_and_counts() -> None:
    assert protocol.Clock(start=100, first=130).metrics(end=200, prompt_tokens=4, completion_tokens=6) == {
        "total_duration": 100,
        "prompt_eval_count": 4,
        "prompt_eval_duration": 30,
        "eval_count": 6,
        "eval_duration": 70,
    }
    assert protocol.Clock(start=100).metrics(200, 0, 0)["eval_duration"] == 0  # no token came


def test_tool_calls_come_back_with_object_arguments() -> None:
    call = protocol.tool_call_out(ToolCall("c1", "get_weather", '{"city": "Oslo"}'), 0)
    assert call == {
        "id": "c1",
        "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo"}},
    }
    with pytest.raises(APIError) as bad:
        protocol.tool_call_out(ToolCall("c2", "f", '{"cut'), 1)
    assert bad.value.status == 502 and bad.value.code == "bad_tool_call"


def test_listing_show_and_ps_of_a_model_object() -> None:
    m = model_pb2.Model(
        id=MODEL,
        created=0,
        source_url="https://example.invalid/chat.gguf",
        parameters_json=orjson.dumps({"ctx_len": 512, "stop": ["a", "b"], "temperature": 0}).decode(),
        metadata_json=orjson.dumps({"quantization": "q4_k_m"}).decode(),
        binaries=[model_pb2.Binary(name="chat.gguf", size=10, sha256="ab" * 32)],
    )
    listed = protocol.listed_model(m)
    assert (listed["name"], listed["size"], listed["modified_at"]) == (
        f"{MODEL}:latest",
        10,
        "1970-01-01T00:00:00Z",
    )
    assert listed["details"]["quantization_level"] == "Q4_K_M" and len(listed["digest"]) == 64
    assert protocol.digest(m) == protocol.digest(model_pb2.Model(id="copy/x", binaries=m.binaries))
    shown = protocol.show(m)
    assert shown["parameters"].splitlines() == [
        f"{'num_ctx':<30} 512",
        f"{'temperature':<30} 0",
        f'{"stop":<30} "a"',
        f'{"stop":<30} "b"',
    ]
    assert shown["model_info"]["jan.context_length"] == 512 and shown["capabilities"] == ["completion"]
    m.metadata_json = orjson.dumps({"capabilities": ["completion", "vision", "tools", "reasoning"]}).decode()
    assert protocol.show(m)["capabilities"] == ["completion", "vision", "tools", "thinking"]  # Ollama's words
    running = protocol.running_model(
        {"model_id": MODEL, "memory_bytes": 7, "parameters": {"ctx_len": 256}}, m
    )
    assert (running["size"], running["expires_at"], running["context_length"]) == (7, protocol.FOREVER, 256)


def test_pull_progress_lines_and_failures() -> None:
    model = model_pb2.Model(id=MODEL, binaries=[model_pb2.Binary(name="chat.gguf", sha256="cd" * 32)])
    job = downloader_pb.Job(files=[downloader_pb.FileProgress(name="chat.gguf", bytes_done=5, bytes_total=9)])
    assert protocol.pull_files(job, model) == [
        {"status": f"pulling {'cd' * 6}", "digest": f"sha256:{'cd' * 32}", "total": 9, "completed": 5}
    ]
    assert protocol.pull_failure(job) is None
    failed = downloader_pb.Job(phase=downloader_pb.PHASE_FAILED, error="disk full")
    assert protocol.pull_failure(failed) == "download failed: disk full"
    assert (
        protocol.pull_failure(downloader_pb.Job(phase=downloader_pb.PHASE_CANCELLED)) == "download cancelled"
    )


def test_embeddings_are_normalised_and_cut_to_dimensions() -> None:
    reply = runner_pb.EmbedResponse(embeddings=[runner_pb.Embedding(values=[3.0, 4.0, 0.0])])
    assert protocol.embeddings_out(reply, None) == [[0.6, 0.8, 0.0]]
    (cut,) = protocol.embeddings_out(reply, 1)
    assert cut == [1.0] and math.isclose(sum(v * v for v in cut), 1.0)
    assert protocol.normalized([0.0, 0.0]) == [0.0, 0.0]
    with pytest.raises(Unsupported) as err:
        protocol.embeddings_out(reply, 4)
    assert err.value.param == "dimensions"


# --- images -----------------------------------------------------------------------------------------------


def test_message_images_go_to_the_runner_before_the_text_and_wait_for_their_bytes() -> None:
    # Whether the model can see them is the runner's to say: it knows whether the model has a projector.
    request, images, _ = chat_with_images(
        messages=[
            {"role": "system", "content": "Look."},
            {"role": "user", "content": "what is this?", "images": ["aGk=", "aG8="]},
        ]
    )
    system, user = request.chat.messages
    assert system.content == "Look." and user.content == ""
    assert [p.WhichOneof("part") for p in user.parts] == ["image", "image", "text"]
    assert user.parts[2].text == "what is this?"
    assert images == [
        ImageRef(param="messages.1.images.0", base64="aGk="),
        ImageRef(param="messages.1.images.1", base64="aG8="),
    ]


def test_generate_images_join_the_prompt_in_the_template() -> None:
    request, images, _ = generate_with_images(prompt="describe", system="be brief", images=["aGk="])
    system, user = request.chat.messages
    assert system.content == "be brief"
    assert [p.WhichOneof("part") for p in user.parts] == ["image", "text"] and user.parts[
        1
    ].text == "describe"
    assert images == [ImageRef(param="images.0", base64="aGk=")]
    only_images, images, _ = generate_with_images(images=["aGk="])
    assert [p.WhichOneof("part") for p in only_images.chat.messages[0].parts] == ["image"]
    assert len(images) == 1
