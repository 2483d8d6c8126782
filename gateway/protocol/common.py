"""What the gateway's request shapes share: strict JSON values, no booleans as numbers, durations, and the
images a request refers to (read by gateway/images.py before the request goes to the runner)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, get_args

import orjson
from pydantic import AfterValidator, BaseModel, model_validator

from jan.runner.v1 import runner_service_pb2 as runner_pb


class Unsupported(ValueError):
    """A request field that cannot be honoured, in any dialect: a 400 `unsupported_parameter` whose
    `param` names it (gateway/errors.py turns it into the dialect's error)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def _encodable(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """A JSON object the services can take: orjson (which writes it on) refuses integers beyond 64 bits
    and nesting deeper than 255, which Python's parser accepts; refused here, that is a 422, not a 500."""
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"not a storable JSON object: {exc}") from None
    return value


JsonObject = Annotated[dict[str, Any] | None, AfterValidator(_encodable)]


class StrictBoolsModel(BaseModel):
    """A request body where `true`/`false` count only for boolean fields: pydantic would otherwise take
    `"temperature": true` as 1.0, which the OpenAPI document (and OpenAI) call invalid."""

    @model_validator(mode="before")
    @classmethod
    def _no_bool_as_number(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field is not None and not _accepts_bool(field.annotation):
                    raise ValueError(f"{name}: a boolean is not valid here")
        return data


def _accepts_bool(annotation: Any) -> bool:
    if annotation is bool or annotation is Any:
        return True
    return any(_accepts_bool(arg) for arg in get_args(annotation))


def parse_keep_alive(value: float | str | None) -> float:
    """Ollama-style keep_alive: seconds, or "5m" / "1h" / "30s"; negative = forever; None = unchanged (0)."""
    if value is None:
        return 0.0
    if isinstance(value, int | float):
        return float(value) if value != 0 else 1e-3  # 0 means: unload right after this request
    text = value.strip().lower()
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[: -len(unit)].lstrip("-").replace(".", "", 1).isdigit():
            seconds = float(text[: -len(unit)]) * units[unit]
            return seconds if seconds != 0 else 1e-3
    try:
        return parse_keep_alive(float(text))
    except ValueError:
        raise ValueError(f'keep_alive {value!r} is not a duration (e.g. 300, "5m", "1h", -1)') from None


def keep_alive_seconds(value: float | str | None) -> float:
    """A request's `keep_alive` (any dialect) in seconds; a value that is no duration is a 400 naming it."""
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise Unsupported("keep_alive", str(exc)) from None


@dataclass(frozen=True)
class ImageRef:
    """An image a request gives, not read yet: `url` (a data: URL or an http(s) URL), or `base64` (the file's
    bytes in base64, of `media_type` when the client says it). `param` names the field it came from.

    A translation stays pure: it puts an empty image part where the image stands and lists the references
    in the order of those parts (messages in order, parts in order); gateway/images.py reads them and fills
    the parts before the request goes to the runner."""

    param: str
    url: str = ""
    base64: str = ""
    media_type: str = ""


# A message's content in order: text, and images not read yet.
Piece = str | ImageRef


def set_content(
    message: runner_pb.ChatMessage, pieces: Sequence[Piece], images: list[ImageRef]
) -> runner_pb.ChatMessage:
    """Sets the message's content: `content` when it is text alone, else `parts` in order (adjacent texts as
    one text part, each image an empty image part, `content` left empty), each image's reference appended
    to `images`. Call it for the request's messages in their order."""
    if not any(isinstance(piece, ImageRef) for piece in pieces):
        message.content = "".join(piece for piece in pieces if isinstance(piece, str))
        return message
    text = ""
    for piece in pieces:
        if isinstance(piece, str):
            text += piece
            continue
        if text:
            message.parts.add(text=text)
            text = ""
        message.parts.add(image=runner_pb.Image())
        images.append(piece)
    if text:
        message.parts.add(text=text)
    return message


def refuse_images(images: Sequence[ImageRef]) -> None:
    """A token count takes no image (the runner counts text only): the first one is refused by name."""
    if images:
        param = images[0].param
        raise Unsupported(param, f"{param}: counting the tokens of an image is not supported")
