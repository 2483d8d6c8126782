"""Which replica of a model serves a request.

Among the replicas the catalog lists, the one with the fewest requests outstanding from this gateway,
except that a request continuing a conversation goes back to the replica that served its prefix (its
prefix cache holds those tokens: turn 2+ reads them instead of computing them again), unless that replica
is overloaded: it may hold at most `load_factor` times its fair share of the outstanding requests plus
this one (consistent hashing with bounded loads, Mirrokni et al., 2018), and never fewer than `floor`
(a runner serves 4 requests at once by default: below that, going elsewhere only loses the cache). A
replica found unreachable is passed over for a few seconds (the catalog hears of its death only when its
heartbeats stop).

The conversation prefix is read from the request: the messages up to each message after the leading
system ones (a shared system prompt alone never pins a conversation; a message's content parts, its
images included, count), or the text prompt in blocks.
Keys are digests; the table of recent prefixes is bounded (least recently used dropped first).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.clients import RunnerClient
from gateway.metrics import MODEL_OUTSTANDING, RUNNER_OUTSTANDING
from jan.runner.v1 import runner_service_pb2 as runner_pb

ROUTING_MODES = ("affinity", "least_loaded")
# Prefix keys a request records (its longest ones): a continuation matches the longest.
KEYS_PER_REQUEST = 8
TEXT_BLOCK = 256  # characters per prefix block of a text prompt
IMAGE_SAMPLE = 4096  # bytes at each end of an image that its part's prefix key reads
SYSTEM_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True)
class Replica:
    """One runner hosting the model, as the catalog named it."""

    name: str
    client: RunnerClient


def prefix_keys(request: runner_pb.GenerateRequest) -> list[bytes]:
    """Digests of the request's conversation prefixes, shortest first (at most KEYS_PER_REQUEST)."""
    digest = hashlib.blake2b(request.model_id.encode(), digest_size=16)
    keys: list[bytes] = []
    if request.WhichOneof("prompt") == "chat":
        past_system = False
        for message in request.chat.messages:
            digest.update(b"\x1e" + message.role.encode() + b"\x1f" + message.content.encode())
            for part in message.parts:
                digest.update(_part_key(part))
            for call in message.tool_calls:
                digest.update(b"\x1d" + call.name.encode() + b"\x1f" + call.arguments.encode())
            past_system = past_system or message.role not in SYSTEM_ROLES
            if past_system:
                keys.append(digest.copy().digest())
    else:
        text = request.text.encode()
        for start in range(0, len(text) - TEXT_BLOCK + 1, TEXT_BLOCK):
            digest.update(text[start : start + TEXT_BLOCK])
            keys.append(digest.copy().digest())
    return keys[-KEYS_PER_REQUEST:]


def _part_key(part: runner_pb.ContentPart) -> bytes:
    """What a content part adds to a prefix key: its text, or an image's size and its first and last
    bytes (a key only picks a replica: a rare collision costs a cache miss, hashing megabytes would cost
    the event loop more)."""
    if part.WhichOneof("part") == "image":
        data = part.image.data
        return b"\x1b" + len(data).to_bytes(8, "little") + data[:IMAGE_SAMPLE] + data[-IMAGE_SAMPLE:]
    return b"\x1c" + part.text.encode()


class Router:
    def __init__(
        self,
        mode: str = "affinity",
        load_factor: float = 1.25,
        max_prefixes: int = 65_536,
        suspect_s: float = 5.0,
        floor: int = 4,
    ) -> None:
        if mode not in ROUTING_MODES:
            raise ValueError(f"routing must be one of {', '.join(ROUTING_MODES)}")
        self.mode = mode
        self.load_factor = load_factor
        self.max_prefixes = max_prefixes
        self.suspect_s = suspect_s
        self.floor = floor
        self._outstanding: dict[str, int] = {}  # runner name -> requests in flight from this gateway
        self._prefixes: OrderedDict[bytes, str] = OrderedDict()  # prefix key -> runner name
        self._suspect: dict[str, float] = {}  # runner name -> monotonic time it is tried again
        self._turn = 0  # breaks ties between equally loaded replicas in turn

    def outstanding(self, name: str) -> int:
        return self._outstanding.get(name, 0)

    def choose(self, replicas: Sequence[Replica], keys: Sequence[bytes] = ()) -> Replica:
        """The replica for a request with these prefix keys (`replicas` must not be empty)."""
        now = time.monotonic()
        healthy = [r for r in replicas if self._suspect.get(r.name, 0.0) <= now] or list(replicas)
        if self.mode == "affinity" and len(healthy) > 1:
            held = self._holder(healthy, keys)
            if held is not None and not self._overloaded(held, healthy):
                return held
        self._turn += 1
        n = len(healthy)
        return min(
            enumerate(healthy), key=lambda item: (self.outstanding(item[1].name), (item[0] - self._turn) % n)
        )[1]

    def _holder(self, replicas: Sequence[Replica], keys: Sequence[bytes]) -> Replica | None:
        by_name = {r.name: r for r in replicas}
        for key in reversed(keys):
            name = self._prefixes.get(key)
            if name is not None and name in by_name:
                return by_name[name]
        return None

    def _overloaded(self, replica: Replica, replicas: Sequence[Replica]) -> bool:
        total = sum(self.outstanding(r.name) for r in replicas) + 1
        bound = max(math.ceil(self.load_factor * total / len(replicas)), self.floor)
        return self.outstanding(replica.name) + 1 > bound

    def served(self, replica: Replica, keys: Sequence[bytes]) -> None:
        """Remembers that `replica` now holds these prefixes."""
        if self.mode != "affinity":
            return
        for key in keys:
            self._prefixes[key] = replica.name
            self._prefixes.move_to_end(key)
        while len(self._prefixes) > self.max_prefixes:
            self._prefixes.popitem(last=False)

    def begin(self, model_id: str, replica: Replica) -> None:
        self._outstanding[replica.name] = self.outstanding(replica.name) + 1
        MODEL_OUTSTANDING.labels(model_id).inc()
        RUNNER_OUTSTANDING.labels(replica.name).inc()

    def end(self, model_id: str, replica: Replica) -> None:
        left = self.outstanding(replica.name) - 1
        if left > 0:
            self._outstanding[replica.name] = left
        else:
            self._outstanding.pop(replica.name, None)
        MODEL_OUTSTANDING.labels(model_id).dec()
        RUNNER_OUTSTANDING.labels(replica.name).dec()

    def suspect(self, replica: Replica) -> None:
        """`replica` could not be reached: passed over while another can serve, for suspect_s."""
        self._suspect[replica.name] = time.monotonic() + self.suspect_s
        if len(self._suspect) > 1024:
            now = time.monotonic()
            self._suspect = {k: v for k, v in self._suspect.items() if v > now}
