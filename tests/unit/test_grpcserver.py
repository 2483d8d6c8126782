"""services/common/grpcserver.py: how a service's gRPC server binds."""

from __future__ import annotations

import pytest

from services.common.grpcserver import GrpcServer


async def test_a_port_already_served_is_refused_not_shared() -> None:
    # gRPC's default SO_REUSEPORT would let a second process bind the port and take half its
    # connections (a second stack on the same ports); the second bind must fail instead.
    first = GrpcServer(["jan.test.v1.First"])
    port = first.bind("127.0.0.1:0")
    await first.start()
    try:
        second = GrpcServer(["jan.test.v1.Second"])
        with pytest.raises(SystemExit, match=f"cannot listen on 127.0.0.1:{port}"):
            second.bind(f"127.0.0.1:{port}")
    finally:
        await first.stop(0)
