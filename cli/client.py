"""A small typed client for the gateway's REST API, used by the `jan` command line (cli/main.py).

Every failure a user can cause or meet (HTTP errors in the gateway's error shape, a gateway that is not
running, a timeout, a transfer cut short) is raised as `CliError` with a message ready to print; httpx
exceptions never leave this module.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx

from cli.upload import ModelArchive

DEFAULT_URL = "http://127.0.0.1:1337"
DEFAULT_TIMEOUT_S = 30.0
CHUNK_SIZE = 1024 * 1024

JSONObject = dict[str, Any]
# Called with (bytes so far, total bytes or None when the size is not known in advance).
ProgressFn = Callable[[int, int | None], None]

_ARCHIVE_TYPES = {
    ".tar.gz": "application/gzip",
    ".tgz": "application/gzip",
    ".gz": "application/gzip",
    ".tar": "application/x-tar",
    ".zip": "application/zip",
}


class CliError(Exception):
    """An expected failure, with a one-line message for the user (and the HTTP details when any)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


def raise_for_error(response: httpx.Response) -> None:
    """Raises CliError for a 4xx/5xx response, with the message of the gateway's error shape.

    The body must have been read (call `response.read()` first on a streamed response).
    """
    if response.status_code < 400:
        return
    message: str | None = None
    code: str | None = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        if isinstance(error.get("message"), str) and error["message"]:
            message = error["message"]
        if isinstance(error.get("code"), str):
            code = error["code"]
    if message is None:
        # Not the gateway's error shape (a proxy in the way, a server that is not the gateway...).
        text = " ".join(response.text.split())[:200]
        reason = response.reason_phrase or "error"
        message = f"HTTP {response.status_code} {reason} from {response.request.url}" + (
            f": {text}" if text else ""
        )
    raise CliError(message, status=response.status_code, code=code)


def model_path(model_id: str) -> str:
    """The URL path of a model, '<folder>/<file>' with each part percent-encoded."""
    return "/v1/models/" + "/".join(quote(part, safe="") for part in model_id.strip().split("/"))


def archive_content_type(path: Path) -> str:
    name = path.name.lower()
    for suffix, content_type in _ARCHIVE_TYPES.items():
        if name.endswith(suffix):
            return content_type
    return "application/octet-stream"


class JanClient:
    """The gateway's REST API over one httpx.Client: base URL, timeout and the optional API key."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.strip().rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "jan-cli"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout
        try:
            self._http = httpx.Client(
                base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
            )
        except (httpx.InvalidURL, ValueError) as exc:
            raise CliError(f"invalid gateway URL {base_url!r}: {exc}") from None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> JanClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing -----------------------------------------------------------------------------------------

    def _transport_error(self, exc: Exception) -> CliError:
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return CliError(f"cannot reach the gateway at {self.base_url}: is it running? (make up)")
        if isinstance(exc, httpx.TimeoutException):
            return CliError(f"the gateway at {self.base_url} did not answer in time ({self.timeout:g} s)")
        if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
            return CliError(f"invalid gateway URL {self.base_url!r}: {exc}")
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
            return CliError(f"the connection to the gateway at {self.base_url} broke off: {exc}")
        return CliError(f"request to the gateway at {self.base_url} failed: {exc}")

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Sends a request; returns the response when it is not an error, else raises CliError."""
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise self._transport_error(exc) from None
        raise_for_error(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise CliError(f"the gateway answered {method} {path} with something that is not JSON") from None

    # --- models -------------------------------------------------------------------------------------------

    def health(self) -> JSONObject:
        result: JSONObject = self._json("GET", "/healthz")
        return result

    def list_models_raw(
        self, states: list[str] | None = None, engines: list[str] | None = None
    ) -> JSONObject:
        """The list response as the gateway sends it, `{"object": "list", "data": [...]}`."""
        params: list[tuple[str, str]] = [("state", s) for s in states or []]
        params += [("engine", e) for e in engines or []]
        result: JSONObject = self._json("GET", "/v1/models", params=params)
        return result

    def list_models(
        self, states: list[str] | None = None, engines: list[str] | None = None
    ) -> list[JSONObject]:
        data: list[JSONObject] = self.list_models_raw(states, engines).get("data", [])
        return data

    def get_model(self, model_id: str) -> JSONObject:
        result: JSONObject = self._json("GET", model_path(model_id))
        return result

    def get_state(self, model_id: str) -> JSONObject:
        result: JSONObject = self._json("GET", model_path(model_id) + "/state")
        return result

    def get_metadata(self, model_id: str) -> JSONObject:
        result: JSONObject = self._json("GET", model_path(model_id) + "/metadata")
        return result

    def delete_model(self, model_id: str) -> JSONObject:
        result: JSONObject = self._json("DELETE", model_path(model_id))
        return result

    def storage(self) -> JSONObject:
        result: JSONObject = self._json("GET", "/v1/storage")
        return result

    def create_model(
        self,
        source_url: str,
        *,
        model_id: str | None = None,
        name: str | None = None,
        description: str | None = None,
        parameters: JSONObject | None = None,
        metadata: JSONObject | None = None,
        import_mode: str | None = None,
    ) -> JSONObject:
        body: JSONObject = {"source_url": source_url}
        optional = {
            "id": model_id,
            "name": name,
            "description": description,
            "parameters": parameters,
            "metadata": metadata,
            "import_mode": import_mode,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        result: JSONObject = self._json("POST", "/v1/models", json=body)
        return result

    def update_model(
        self,
        model_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        parameters: JSONObject | None = None,
        metadata: JSONObject | None = None,
    ) -> JSONObject:
        optional = {"name": name, "description": description, "parameters": parameters, "metadata": metadata}
        body = {key: value for key, value in optional.items() if value is not None}
        result: JSONObject = self._json("PATCH", model_path(model_id), json=body)
        return result

    def list_problems(self) -> list[JSONObject]:
        """The json files under models/ that are not valid model objects: `{path, id, reason}` each."""
        data: list[JSONObject] = self._json("GET", "/v1/catalog/problems").get("data", [])
        return data

    # --- folders as archives ------------------------------------------------------------------------------

    def export_folder(self, folder: str, out: BinaryIO, progress: ProgressFn | None = None) -> int:
        """Streams the folder's .tar.gz into `out`; returns the number of bytes written."""
        path = f"/v1/folders/{quote(folder.strip(), safe='')}/export"
        # No read deadline: the archive is made while it is sent; the gateway bounds the transfer.
        timeout = httpx.Timeout(self.timeout, read=None)
        written = 0
        try:
            with self._http.stream("GET", path, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise_for_error(response)
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                if progress:
                    progress(0, total)
                for chunk in response.iter_bytes(CHUNK_SIZE):
                    out.write(chunk)
                    written += len(chunk)
                    if progress:
                        progress(written, total)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise self._transport_error(exc) from None
        return written

    def import_folder(
        self, archive: Path, folder: str | None = None, progress: ProgressFn | None = None
    ) -> JSONObject:
        """Uploads an archive file as the request body; returns `{folder, data, problems}`."""
        try:
            total = archive.stat().st_size
            handle = archive.open("rb")
        except OSError as exc:
            raise CliError(f"cannot read {archive}: {exc.strerror or exc}") from None

        def body() -> Iterator[bytes]:
            sent = 0
            if progress:
                progress(0, total)
            while chunk := handle.read(CHUNK_SIZE):
                sent += len(chunk)
                yield chunk
                if progress:
                    progress(sent, total)

        headers = {"Content-Type": archive_content_type(archive), "Content-Length": str(total)}
        params = {"folder": folder} if folder else None
        # The gateway answers once the archive is extracted: allow for that after the upload.
        timeout = httpx.Timeout(self.timeout, read=None, write=None)
        with handle:
            result: JSONObject = self._json(
                "POST", "/v1/folders/import", content=body(), headers=headers, params=params, timeout=timeout
            )
        return result

    def upload_model(
        self, archive: ModelArchive, folder: str, progress: ProgressFn | None = None
    ) -> JSONObject:
        """Sends a model file with its json as an archive built on the fly (see cli/upload.py)."""
        headers = {"Content-Type": "application/x-tar", "Content-Length": str(archive.length)}
        timeout = httpx.Timeout(self.timeout, read=None, write=None)
        result: JSONObject = self._json(
            "POST",
            "/v1/folders/import",
            content=archive.chunks(progress),
            headers=headers,
            params={"folder": folder},
            timeout=timeout,
        )
        return result

    # --- downloads ----------------------------------------------------------------------------------------

    def start_download(self, model_id: str) -> JSONObject:
        """Starts fetching the model's missing binaries; joins a running job, resumes a paused one."""
        result: JSONObject = self._json("POST", model_path(model_id) + "/download")
        return result

    def get_download(self, model_id: str) -> JSONObject:
        """A snapshot of the model's download job."""
        result: JSONObject = self._json("GET", model_path(model_id) + "/download")
        return result

    def pause_download(self, model_id: str) -> JSONObject:
        result: JSONObject = self._json("POST", model_path(model_id) + "/download/pause")
        return result

    def resume_download(self, model_id: str) -> JSONObject:
        result: JSONObject = self._json("POST", model_path(model_id) + "/download/resume")
        return result

    def cancel_download(self, model_id: str) -> JSONObject:
        result: JSONObject = self._json("DELETE", model_path(model_id) + "/download")
        return result

    def list_downloads(self) -> list[JSONObject]:
        data: list[JSONObject] = self._json("GET", "/v1/downloads").get("data", [])
        return data

    def watch_download(self, model_id: str) -> Iterator[JSONObject]:
        """The job's states from the gateway's Server-Sent Events, until it ends or is paused.

        An error event (sent once the stream has begun) is raised as CliError; so is a transport failure.
        """
        path = model_path(model_id) + "/download"
        with closing(self._sse("GET", path)) as events:
            for payload in events:
                yield _sse_event(payload, path, "the progress stream failed")

    # --- running models -----------------------------------------------------------------------------------

    def start_model(
        self, model_id: str, *, parameters: JSONObject | None = None, keep_alive: float | str | None = None
    ) -> JSONObject:
        """Loads the model on a runner (answers once it runs); `keep_alive`: seconds, "5m", -1 = forever."""
        optional = {"parameters": parameters, "keep_alive": keep_alive}
        body = {key: value for key, value in optional.items() if value is not None}
        # No read deadline: loading a large model takes a while; the gateway bounds it (load_timeout_s).
        timeout = httpx.Timeout(self.timeout, read=None)
        result: JSONObject = self._json("POST", model_path(model_id) + "/start", json=body, timeout=timeout)
        return result

    def stop_model(self, model_id: str) -> JSONObject:
        result: JSONObject = self._json("POST", model_path(model_id) + "/stop")
        return result

    def list_running(self) -> list[JSONObject]:
        """The models loaded on every live runner: model_id, runner, engine, memory_bytes, expires_at..."""
        data: list[JSONObject] = self._json("GET", "/v1/running").get("data", [])
        return data

    def chat_stream(self, body: JSONObject) -> Generator[JSONObject, None, None]:
        """POST /v1/chat/completions with `"stream": true`: yields the chat.completion.chunk objects.

        An error event (sent once the stream has begun) is raised as CliError; so is a transport failure.
        Closing the generator early (or an exception inside it, such as KeyboardInterrupt) closes the
        connection, which cancels the generation on the server.
        """
        path = "/v1/chat/completions"
        with closing(self._sse("POST", path, json={**body, "stream": True})) as events:
            for payload in events:
                yield _sse_event(payload, path, "the answer stream failed")

    def _sse(self, method: str, path: str, **kwargs: Any) -> Generator[str, None, None]:
        """The data of each Server-Sent Event of a streamed response, until `[DONE]` or its end."""
        # No read deadline: events come as the work goes on, and there may be none for a while.
        timeout = httpx.Timeout(self.timeout, read=None)
        headers = {"Accept": "text/event-stream"}
        try:
            with self._http.stream(method, path, headers=headers, timeout=timeout, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    raise_for_error(response)
                data: list[str] = []
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
                        continue
                    if line or not data:
                        continue  # a comment, another field, or a blank line between events
                    payload, data = "\n".join(data), []
                    if payload == "[DONE]":
                        return
                    yield payload
                if data and "\n".join(data) != "[DONE]":
                    yield "\n".join(data)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise self._transport_error(exc) from None


def _sse_event(payload: str, path: str, failed: str) -> JSONObject:
    """One event of a stream (a job state, a chunk), or the error it carries raised as CliError."""
    try:
        event = json.loads(payload)
    except ValueError:
        raise CliError(f"the gateway sent an event that is not JSON on {path}") from None
    if not isinstance(event, dict):
        raise CliError(f"the gateway sent an unexpected event on {path}")
    error = event.get("error")
    if isinstance(error, dict):
        message = str(error.get("message") or failed)
        code = error.get("code")
        raise CliError(message, code=code if isinstance(code, str) else None)
    return event
