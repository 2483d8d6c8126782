"""The gateway's kept model list (gateway/model_list.py): built once, brought up to date by deltas to the
same bytes a full build gives, paged and filtered from the kept pieces."""

from __future__ import annotations

import orjson

from gateway.model_list import Listing
from jan.model.v1 import model_pb2

STOPPED, RUNNING = model_pb2.MODEL_STATE_STOPPED, model_pb2.MODEL_STATE_RUNNING


def model(model_id: str, name: str = "", state: int = STOPPED, engine: str = "llamacpp") -> model_pb2.Model:
    return model_pb2.Model(
        id=model_id, object="model", name=name or model_id, state=state, engine=engine, parameters_json="{}"
    )


def test_a_delta_gives_the_bytes_of_a_full_build() -> None:
    before = [model("a/a"), model("c/c"), model("e/e")]
    listing = Listing.build(before, "v-1")
    after = listing.apply([model("c/c", "C!"), model("b/b"), model("f/f")], ["e/e", "zz/unknown"], "v-2")
    expected = [model("a/a"), model("b/b"), model("c/c", "C!"), model("f/f")]
    assert after.body == Listing.build(expected, "v-2").body
    assert after.ids == ["a/a", "b/b", "c/c", "f/f"] and after.version == "v-2"
    assert listing.ids == ["a/a", "c/c", "e/e"]  # the old listing is left as it was (requests may hold it)


def test_pages_and_filters_come_from_the_kept_pieces() -> None:
    listing = Listing.build(
        [model("a/a"), model("b/b", state=RUNNING), model("c/c", engine="api"), model("d/d", state=RUNNING)],
        "v-1",
    )
    assert orjson.loads(listing.select()) == orjson.loads(listing.body)
    running = orjson.loads(listing.select(states=[RUNNING]))
    assert [m["id"] for m in running["data"]] == ["b/b", "d/d"] and set(running) == {"object", "data"}
    page = orjson.loads(listing.select(limit=2, after="a/a"))
    assert [m["id"] for m in page["data"]] == ["b/b", "c/c"]
    assert (page["first_id"], page["last_id"], page["has_more"]) == ("b/b", "c/c", True)
    api = orjson.loads(listing.select(engines=["api"], limit=5))
    assert [m["id"] for m in api["data"]] == ["c/c"] and api["has_more"] is False


def test_the_etag_names_the_version_and_the_query() -> None:
    listing = Listing.build([model("a/a")], "boot-7")
    assert listing.etag() == '"boot-7"'
    assert listing.etag("limit=1") != listing.etag("limit=2") != listing.etag()
