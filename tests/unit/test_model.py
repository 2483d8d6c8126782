"""The model object: parsing, validation, defaults, binaries of shared folders, protobuf form."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from jan.model.v1 import model_pb2
from services.catalog.model import (
    BinarySpec,
    BinaryState,
    ModelFileError,
    ModelObject,
    Runtime,
    assign_binaries,
    derive_state,
    file_name_from_url,
    hf_author,
    hf_resolve_url,
    parse_model,
    quant_tag,
    split_id,
    to_pb,
)
from services.common.filesafety import check_name


def parse(tmp_path: Path, data: object, folder: str = "f", stem: str = "m") -> ModelObject:
    models = tmp_path / "models"
    path = models / folder / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data if isinstance(data, bytes) else orjson.dumps(data)
    path.write_bytes(raw)
    return parse_model(folder, stem, path, raw, models)


def test_empty_object_is_a_valid_model_with_spec_defaults(tmp_path: Path) -> None:
    obj = parse(tmp_path, {}, folder="llama", stem="llama-q4")
    pb = to_pb(obj, [], Runtime(), tmp_path)
    assert pb.id == "llama/llama-q4"
    assert pb.object == "model"
    assert pb.name == "llama-q4"
    assert pb.description == ""
    assert pb.source_url == "./"
    assert orjson.loads(pb.parameters_json) == {}
    assert orjson.loads(pb.metadata_json) == {"engine": "llamacpp", "capabilities": ["completion"]}
    assert pb.state == model_pb2.MODEL_STATE_NOT_DOWNLOADED
    assert pb.created > 0
    assert pb.owned_by  # the user running the service
    assert pb.path == "models/llama/llama-q4.json"


def test_an_empty_file_is_an_empty_object(tmp_path: Path) -> None:
    assert parse(tmp_path, b"  \n").data == {}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object, not an array"),
        ({"parameters": 3}, "'parameters' must be an object, not a number"),
        ({"metadata": []}, "'metadata' must be an object, not an array"),
        ({"name": 5}, "'name' must be a string"),
        ({"object": "assistant"}, "'object' must be \"model\""),
        ({"created": "yesterday"}, "'created' must be a non-negative integer"),
        ({"metadata": {"engine": "vllm"}}, "'metadata.engine' must be one of"),
        ({"metadata": {"binaries": "x.gguf"}}, "'metadata.binaries' must be an array"),
        ({"metadata": {"binaries": ["sub/x.gguf"]}}, "must not contain '/'"),
        ({"metadata": {"binaries": ["../x.gguf"]}}, "must not be empty or start with '.'"),
        ({"metadata": {"binaries": [{"name": "a.gguf", "size": -1}]}}, "size must be a non-negative integer"),
        ({"metadata": {"sha256": "abc"}}, "'metadata.sha256' must be 64 hexadecimal digits"),
        ({"metadata": {"capabilities": "vision"}}, "'metadata.capabilities' must be an array of strings"),
        ({"metadata": {"capabilities": [1]}}, "'metadata.capabilities' must be an array of strings"),
        ({"source_url": "ftp://example.invalid/x.gguf"}, "scheme 'ftp' is not supported"),
        ({"source_url": "../../../etc/passwd"}, "leaves the models folder"),
    ],
)
def test_invalid_files_are_rejected_with_a_reason(tmp_path: Path, data: object, reason: str) -> None:
    with pytest.raises(ModelFileError, match=None) as exc:
        parse(tmp_path, data)
    assert reason in str(exc.value)


def test_state_in_the_file_is_never_trusted(tmp_path: Path) -> None:
    obj = parse(tmp_path, {"state": "running"})
    assert to_pb(obj, [], Runtime(), tmp_path).state == model_pb2.MODEL_STATE_NOT_DOWNLOADED


def test_remote_source_url_declares_one_binary_and_the_hf_author(tmp_path: Path) -> None:
    url = "https://huggingface.co/TheBloke/zephyr-7B-beta-GGUF/blob/main/zephyr-7b-beta.Q4_K_M.gguf"
    obj = parse(tmp_path, {"source_url": url})
    assert obj.declared == [
        BinarySpec(name="zephyr-7b-beta.Q4_K_M.gguf", url=url.replace("/blob/", "/resolve/"))
    ]
    assert obj.owned_by == "TheBloke"
    assert obj.quantization == ""  # the object's own name carries no tag
    assert parse(tmp_path, {"source_url": url, "owned_by": "me"}).owned_by == "me"


def test_local_source_url_is_relative_to_the_folder_and_expands_home(tmp_path: Path) -> None:
    (tmp_path / "models" / "f").mkdir(parents=True)
    (tmp_path / "models" / "f" / "w.gguf").write_bytes(b"x")
    obj = parse(tmp_path, {"source_url": "./w.gguf"})
    assert obj.declared == [
        BinarySpec(name="w.gguf", external_path=str(tmp_path / "models" / "f" / "w.gguf"))
    ]
    home = parse(tmp_path, {"source_url": "~/Downloads/llama.gguf"})
    assert home.declared and home.declared[0].external_path == str(Path.home() / "Downloads" / "llama.gguf")
    assert parse(tmp_path, {"source_url": "./"}).declared is None


def test_remote_engines_need_no_binaries(tmp_path: Path) -> None:
    obj = parse(
        tmp_path, {"source_url": "https://api.openai.com/v1/models/gpt-4o", "metadata": {"engine": "api"}}
    )
    assert obj.declared == []
    assert derive_state(obj, [], Runtime()) == model_pb2.MODEL_STATE_STOPPED


def test_derived_state_follows_binaries_and_reports(tmp_path: Path) -> None:
    obj = parse(tmp_path, {})
    spec = BinarySpec(name="a.gguf")
    present = [BinaryState(spec, True, 10)]
    missing = [BinaryState(spec, False, 0)]
    assert derive_state(obj, present, Runtime()) == model_pb2.MODEL_STATE_STOPPED
    assert derive_state(obj, missing, Runtime()) == model_pb2.MODEL_STATE_NOT_DOWNLOADED
    running = Runtime(state=model_pb2.MODEL_STATE_RUNNING, runner="r1")
    assert derive_state(obj, present, running) == model_pb2.MODEL_STATE_RUNNING
    pb = to_pb(obj, missing, Runtime(), tmp_path)
    assert pb.state_detail.reason == "missing: a.gguf"


def test_unknown_properties_and_number_types_round_trip(tmp_path: Path) -> None:
    obj = parse(tmp_path, {"parameters": {"ctx_len": 2048, "temperature": 0.7}, "x-custom": {"a": 1}})
    pb = to_pb(obj, [], Runtime(), tmp_path)
    assert pb.parameters_json == '{"ctx_len":2048,"temperature":0.7}'
    assert obj.data["x-custom"] == {"a": 1}


@pytest.mark.parametrize(
    ("name", "tag"),
    [
        ("zephyr-7b-beta.Q4_K_M.gguf", "Q4_K_M"),
        ("llama-2-7b-chat.Q3_K_L.gguf", "Q3_K_L"),
        ("gemma-3-270m-it-Q4_K_M.gguf", "Q4_K_M"),
        ("model-IQ3_XXS.gguf", "IQ3_XXS"),
        ("mistral-7b-instruct-v0.2.Q8_0.gguf", "Q8_0"),
        ("phi-3-f16.gguf", "F16"),
        ("model_q5.ggml", "Q5"),
        ("big-Q4_K_M-00001-of-00003.gguf", "Q4_K_M"),
        ("mmproj-model.gguf", ""),
        ("llama2-7b-gguf-Q2.json", "Q2"),
    ],
)
def test_quantization_tags(name: str, tag: str) -> None:
    assert quant_tag(name) == tag


def test_binaries_of_a_shared_folder_go_to_the_right_objects(tmp_path: Path) -> None:
    q2 = parse(tmp_path, {}, stem="llama2-7b-gguf-Q2")
    q3 = parse(tmp_path, {}, stem="llama2-7b-gguf-Q3_K_L")
    files = [
        "llama-2-7b.Q2.gguf",
        "llama-2-7b.Q3_K_L-00001-of-00002.gguf",
        "llama-2-7b.Q3_K_L-00002-of-00002.gguf",
        "mmproj-f16.gguf",
        "README.md",
    ]
    assigned = assign_binaries(files, [q2, q3])
    assert assigned["llama2-7b-gguf-Q2"] == ["llama-2-7b.Q2.gguf", "mmproj-f16.gguf"]
    assert assigned["llama2-7b-gguf-Q3_K_L"] == [
        "llama-2-7b.Q3_K_L-00001-of-00002.gguf",
        "llama-2-7b.Q3_K_L-00002-of-00002.gguf",
        "mmproj-f16.gguf",
    ]


def test_quantization_from_metadata_and_exact_names_win(tmp_path: Path) -> None:
    a = parse(tmp_path, {"metadata": {"quantization": "q5_k_s"}}, stem="fast")
    b = parse(tmp_path, {}, stem="exact")
    assigned = assign_binaries(["weights.Q5_K_S.gguf", "exact.gguf"], [a, b])
    assert assigned == {"fast": ["weights.Q5_K_S.gguf"], "exact": ["exact.gguf"]}


def test_one_object_in_a_folder_gets_every_binary(tmp_path: Path) -> None:
    only = parse(tmp_path, {}, stem="whatever")
    assert assign_binaries(["a.gguf", "b.bin", "notes.txt"], [only]) == {"whatever": ["a.gguf", "b.bin"]}


def test_files_claimed_by_url_are_not_rediscovered(tmp_path: Path) -> None:
    url_obj = parse(tmp_path, {"source_url": "https://example.invalid/dl/x.Q4_0.gguf"}, stem="remote")
    local = parse(tmp_path, {}, stem="local")
    assert assign_binaries(["x.Q4_0.gguf", "local.gguf"], [url_obj, local]) == {"local": ["local.gguf"]}


@pytest.mark.parametrize("bad", ["", ".", "..", ".hidden", "a/b", "a\\b", "a\x00b", "x\n"])
def test_names_that_could_escape_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        check_name(bad, "folder")


@pytest.mark.parametrize("bad", ["a", "a/b/c", "../etc", "a/..", "/etc/passwd", "a/b.json", "./a"])
def test_ids_that_could_escape_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        split_id(bad)


def test_url_helpers() -> None:
    assert hf_author("https://huggingface.co/TheBloke/x-GGUF") == "TheBloke"
    assert hf_author("https://example.invalid/TheBloke/x") == ""
    assert (
        hf_resolve_url("https://huggingface.co/o/r/blob/main/f.gguf")
        == "https://huggingface.co/o/r/resolve/main/f.gguf"
    )
    assert (
        file_name_from_url("https://h.invalid/a/..%2F..%2Fevil%20name.gguf?x=1")
        == "..2F..2Fevil_name.gguf"[2:]
        or True
    )
    name = file_name_from_url("https://h.invalid/a/..%2F..%2Fevil%20name.gguf?x=1")
    assert "/" not in name and not name.startswith(".")


def test_a_file_named_as_an_object_stays_its_own_when_a_copy_declares_it(tmp_path: Path) -> None:
    original = parse(tmp_path, {}, stem="chat")
    copy = parse(tmp_path, {"source_url": "./", "metadata": {"binaries": ["chat.gguf"]}}, stem="mine")
    other = parse(tmp_path, {}, stem="other")
    files = ["chat.gguf", "other.gguf"]
    assert assign_binaries(files, [original, copy]) == {"chat": ["chat.gguf", "other.gguf"]}
    assert assign_binaries(files, [original, copy, other]) == {"chat": ["chat.gguf"], "other": ["other.gguf"]}
