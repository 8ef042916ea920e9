"""ftjobs: self-hosted fine-tuning of language models as jobs.

`from ftjobs import Client` is the thin HTTP client; the rest lives in sub-packages:
`ftjobs.client` (wire models, client, CLI), `ftjobs.core` (what the API and the worker share),
`ftjobs.service` (the FastAPI app), `ftjobs.jobs` (the worker) and `ftjobs.launch` (`ftjobs up`, the demo).
Importing `ftjobs` loads nothing heavy: `Client` and `AsyncClient` are resolved on first use.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

__all__ = ["Client", "AsyncClient", "__version__"]

try:
    __version__ = version("ftjobs")
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:  # pragma: no cover
    from ftjobs.client.client import AsyncClient, Client


def __getattr__(name: str) -> Any:
    if name in ("Client", "AsyncClient"):
        from ftjobs.client import client as _client

        return getattr(_client, name)
    raise AttributeError(name)
