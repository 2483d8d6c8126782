"""An aiohttp resolver that applies the address rules of `netsafety` at connect time.

Every outgoing HTTP connection of the services (downloads, the api engine's remotes, the remote
importers) resolves through it: the addresses are checked when the connection is made, so a DNS answer
cannot change between the check and the connection (no rebinding), and only addresses the settings
allow are ever dialled.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from services.common import netsafety


class SafeResolver(AbstractResolver):
    """aiohttp resolver that only ever returns addresses the URL rules allow (checked at connect time, so
    a DNS answer cannot change between the check and the connection)."""

    def __init__(
        self, allow_private: bool, resolver: netsafety.Resolver = netsafety.default_resolver
    ) -> None:
        self.allow_private = allow_private
        self.resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        url = f"http://[{host}]:{port or 80}/" if ":" in host else f"http://{host}:{port or 80}/"
        try:
            addresses = await asyncio.to_thread(
                netsafety.check_source_url, url, allow_private=self.allow_private, resolver=self.resolver
            )
        except netsafety.UnsafeURLError as exc:
            raise OSError(f"refused: {exc}") from None
        return [
            ResolveResult(
                hostname=host,
                host=str(a),
                port=port,
                family=socket.AF_INET6 if a.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for a in addresses
        ]

    async def close(self) -> None:
        return None


def safe_session(
    allow_private: bool,
    resolver: netsafety.Resolver = netsafety.default_resolver,
    *,
    timeout: aiohttp.ClientTimeout,
    limit: int = 100,
    **session: Any,
) -> aiohttp.ClientSession:
    """An aiohttp session that dials only addresses the rules allow, checked at connect time (no DNS cache,
    so every connection resolves through SafeResolver) and never through a proxy from the environment."""
    connector = aiohttp.TCPConnector(
        resolver=SafeResolver(allow_private, resolver), limit=limit, ttl_dns_cache=0, use_dns_cache=False
    )
    return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False, **session)
