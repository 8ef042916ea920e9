"""ftjobs client: the wire contract (`client.models`) and a thin httpx client (`client.Client`).

Importing `client` loads neither httpx nor anything heavy: the worker imports `client.models` and
`client.keys` only, and must never load httpx.
"""

from typing import TYPE_CHECKING, Any

__all__ = ["Client", "AsyncClient"]

if TYPE_CHECKING:  # pragma: no cover
    from ftjobs.client.client import AsyncClient, Client


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ftjobs.client import client as _client

        return getattr(_client, name)
    raise AttributeError(name)
