"""API keys on the gateway: a real catalog gRPC server behind the real app, and the `jan` command line
against real gateway processes started with a key file."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from cli.main import app as jan_app
from cli.stack import Stack
from gateway.auth import KeyChecker, bearer_token
from gateway.settings import GatewaySettings
from services.catalog.core import Catalog
from services.catalog.settings import CatalogSettings
from services.common.envsettings import SettingsError
from tests.harness import process_stack, serving_catalog, serving_gateway

KEY_A = "jan-test-key-aaaaaaaaaaaaaaaa"
KEY_B = "jan-test-key-bbbbbbbbbbbbbbbb"


def assert_401(resp: httpx.Response, code: str) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.headers["www-authenticate"].startswith("Bearer")
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "authentication_error"
    assert body["error"]["code"] == code
    assert KEY_A not in resp.text and KEY_B not in resp.text


@pytest.fixture
async def catalog_address(tmp_path: Path) -> AsyncIterator[str]:
    settings = CatalogSettings(root=tmp_path / "jan", port=0, seed_models_dir=None, import_allowed_dirs=[])
    async with serving_catalog(Catalog(settings)) as address:
        yield address


@pytest.fixture
async def http(catalog_address: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# the ops team's key\n\n  {KEY_B}  \n# {KEY_A}-commented-out\n")
    settings = {"catalog_address": catalog_address, "api_keys": KEY_A, "api_keys_file": keys_file}
    async with serving_gateway(timeout=5, **settings) as gw:
        yield gw.http


async def test_a_key_from_the_list_or_the_file_opens_every_route(http: httpx.AsyncClient) -> None:
    for key in (KEY_A, KEY_B):
        resp = await http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["object"] == "list"
    # The scheme is case-insensitive (RFC 7235); the token is not.
    assert (await http.get("/v1/models", headers={"Authorization": f"bearer {KEY_A}"})).status_code == 200
    resp = await http.get("/v1/models", headers={"Authorization": f"Bearer {KEY_A.upper()}"})
    assert_401(resp, "invalid_api_key")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer   "},
        {"Authorization": f"Basic {KEY_A}"},
        {"Authorization": KEY_A},
        {"api-key": KEY_A},  # Azure's header is not accepted: one way in
        {"X-API-Key": KEY_A},
    ],
    ids=["none", "empty", "scheme-only", "blank-token", "basic", "no-scheme", "api-key", "x-api-key"],
)
async def test_a_missing_key_is_401_missing_api_key(http: httpx.AsyncClient, headers: dict[str, str]) -> None:
    assert_401(await http.get("/v1/models", headers=headers), "missing_api_key")


@pytest.mark.parametrize(
    "token",
    [KEY_A[:-1], KEY_A + "a", KEY_A + KEY_B, f"{KEY_A},{KEY_B}", "# the ops team's key", "x"],
    ids=["prefix", "longer", "two-concatenated", "the-list", "a-comment-line", "short"],
)
async def test_a_wrong_key_is_401_invalid_api_key(http: httpx.AsyncClient, token: str) -> None:
    assert_401(await http.get("/v1/models", headers={"Authorization": f"Bearer {token}"}), "invalid_api_key")


async def test_every_method_and_unknown_paths_are_guarded_before_routing(http: httpx.AsyncClient) -> None:
    bad = {"Authorization": "Bearer nope"}
    assert_401(
        await http.post("/v1/chat/completions", json={"model": "a/b", "messages": []}), "missing_api_key"
    )
    assert_401(
        await http.post("/v1/folders/import", content=b"not an archive", headers=bad), "invalid_api_key"
    )
    assert_401(await http.delete("/v1/models/a/b", headers=bad), "invalid_api_key")
    assert_401(await http.get("/v1/folders/x/export"), "missing_api_key")
    # No route enumeration without a key: an unknown path is 401 too, and 404 only with one.
    assert_401(await http.get("/v1/no-such-route"), "missing_api_key")
    resp = await http.get("/v1/no-such-route", headers={"Authorization": f"Bearer {KEY_A}"})
    assert resp.status_code == 404


async def test_each_dialect_reads_the_key_where_its_clients_send_it_and_refuses_in_its_own_shape(
    http: httpx.AsyncClient,
) -> None:
    # Anthropic's SDK sends `x-api-key`: on Anthropic's routes it authenticates (as does a Bearer token).
    for headers in ({"x-api-key": KEY_A}, {"X-Api-Key": KEY_B}, {"Authorization": f"Bearer {KEY_A}"}):
        resp = await http.post("/v1/messages/count_tokens", json={}, headers=headers)
        assert resp.status_code != 401, resp.text
        assert resp.json()["type"] == "error"  # past the key: the (empty) request is refused in its shape
    resp = await http.post("/v1/messages", json={}, headers={"x-api-key": "nope"})
    assert resp.status_code == 401 and resp.headers["www-authenticate"].startswith("Bearer")
    assert resp.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid API key"},
    }
    resp = await http.post("/v1/messages", json={})
    assert resp.status_code == 401 and "x-api-key" in resp.json()["error"]["message"]
    # Ollama's clients send what they are given (`headers={"Authorization": "Bearer ..."}`); Ollama's
    # errors are `{"error": "<message>"}`.
    resp = await http.get("/api/tags")
    assert resp.status_code == 401 and resp.json() == {
        "error": "missing API key: send it as 'Authorization: Bearer <key>'"
    }
    resp = await http.get("/api/tags", headers={"x-api-key": KEY_A})  # not Ollama's way: one way in
    assert resp.status_code == 401
    # The Responses API is OpenAI's: Bearer only, OpenAI's error shape.
    assert_401(await http.post("/v1/responses", json={}, headers={"x-api-key": KEY_A}), "missing_api_key")


async def test_health_and_the_openapi_document_are_open_and_say_how_to_authenticate(
    http: httpx.AsyncClient,
) -> None:
    resp = await http.get("/healthz")
    assert resp.status_code in (200, 503) and "status" in resp.json()  # no downloader here: 503 is fine
    assert (await http.get("/docs")).status_code == 200
    doc = (await http.get("/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["apiKey"]["description"],
    }
    assert doc["security"] == [{"apiKey": []}]
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    listing = doc["paths"]["/v1/models"]["get"]
    assert "security" not in listing and "401" in listing["responses"]
    assert listing["responses"]["401"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    assert "ErrorResponse" in doc["components"]["schemas"]


async def test_keys_never_reach_the_logs(http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await http.get("/v1/models", headers={"Authorization": f"Bearer {KEY_A}"})
    await http.get("/v1/models", headers={"Authorization": f"Bearer {KEY_A}x"})
    await http.get("/v1/nothing-here", headers={"Authorization": f"Bearer {KEY_B}"})
    assert any("invalid_api_key" in r.getMessage() for r in caplog.records)  # the refusal is logged...
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert KEY_A not in text and KEY_B not in text  # ...without the key


async def test_without_keys_the_gateway_is_open_and_its_document_has_no_security(
    catalog_address: str,
) -> None:
    async with serving_gateway(timeout=5, catalog_address=catalog_address) as gw:
        assert (await gw.http.get("/v1/models")).status_code == 200
        doc = (await gw.http.get("/openapi.json")).json()
        assert "security" not in doc and "securitySchemes" not in doc.get("components", {})


def test_key_checker_compares_whole_keys() -> None:
    checker = KeyChecker([KEY_A, KEY_B])
    assert checker.valid(KEY_A.encode()) and checker.valid(KEY_B.encode())
    for wrong in (b"", KEY_A[:-1].encode(), (KEY_A + " ").encode(), KEY_A.encode() * 2):
        assert not checker.valid(wrong)
    assert not KeyChecker([])
    assert bearer_token([(b"authorization", b"Bearer  abc ")]) == b"abc"
    assert bearer_token([(b"authorization", b"Token abc")]) is None


def test_bad_key_settings_stop_the_gateway_without_echoing_keys(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# only comments\n\n   \n")
    cases: list[tuple[dict[str, object], str]] = [
        ({"api_keys": " , ,"}, "holds no key"),
        ({"api_keys_file": empty}, "holds no key"),
        ({"api_keys_file": tmp_path / "missing"}, "cannot read it"),
        ({"api_keys": f"{KEY_A},{KEY_B} with space"}, "key #2 contains spaces"),
        ({"api_keys": f"{KEY_A},caf\u00e9"}, "key #2 contains"),
    ]
    for kwargs, message in cases:
        with pytest.raises(SettingsError) as info:
            GatewaySettings(**kwargs)  # type: ignore[arg-type]
        assert message in str(info.value)
        assert KEY_A not in str(info.value) and KEY_B not in str(info.value)
    # The printed settings mask the keys.
    printed = GatewaySettings(api_keys=KEY_A).to_json()
    assert KEY_A not in printed


# --- the `jan` command line against real processes ----------------------------------------------------


@pytest.fixture(scope="module")
def keyed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("janroot")
    keys = root / "api-keys"
    keys.write_text(f"{KEY_A}\n")
    # No runner: listing models needs none.
    with process_stack(root, {"JAN_API_KEYS_FILE": str(keys)}, ("catalog", "downloader", "gateway")) as s:
        yield s


@pytest.mark.e2e
def test_the_cli_sends_jan_api_key(keyed_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()
    env: dict[str, str | None] = {"JAN_URL": keyed_stack.url, "NO_COLOR": "1", "COLUMNS": "200"}
    result = runner.invoke(jan_app, ["models", "list", "--json"], env={**env, "JAN_API_KEY": KEY_A})
    assert result.exit_code == 0, result.output
    assert '"object": "list"' in result.stdout
    result = runner.invoke(jan_app, ["models", "list"], env={**env, "JAN_API_KEY": None})
    assert result.exit_code == 1 and "missing API key" in result.stderr
    result = runner.invoke(jan_app, ["models", "list"], env={**env, "JAN_API_KEY": KEY_B})
    assert result.exit_code == 1 and "invalid API key" in result.stderr
    assert httpx.get(f"{keyed_stack.url}/healthz", timeout=5).status_code == 200
    # The key file's contents never reach the gateway's log.
    assert KEY_A not in (keyed_stack.log_dir / "gateway.log").read_text()
