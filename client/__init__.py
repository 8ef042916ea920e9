"""ftjobs client: the wire contract (`ftjobs.client.models`) and a thin httpx client (`ftjobs.client.Client`).

Importing `ftjobs.client` loads neither httpx nor anything heavy: the worker imports `ftjobs.client.models`
only, and must never load httpx. The CLI's commands are `ftjobs.client.cli`, what it prints `ftjobs.client.display`;
the `ftjobs` console script is `ftjobs.launch.cli`, which adds the commands that start processes.
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
