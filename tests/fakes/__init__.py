"""In-process fakes of external services that tests talk to over real loopback sockets."""

from tests.fakes.hub import FakeHub, Faults

__all__ = ["FakeHub", "Faults"]
