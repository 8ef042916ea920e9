"""A lean Redis client for the API's most polled command (the job GET's script, `service/reads.py`): one connection
per event loop, the commands of concurrent requests written together and their replies read in order
(auto-pipelining), replies parsed by hiredis. Under load a job GET then costs a fraction of a round trip and of
redis-py's per-command work.

It speaks to the Redis the app's async client is configured for (its pool's connection settings: host and port or
a unix socket, username, password, db, timeouts); `for_client` returns None for what it does not speak (TLS), and
the caller keeps redis-py. Errors are redis-py's: ConnectionError (a 503 upstream) when Redis cannot be reached or
the connection drops, TimeoutError when a reply is later than the socket timeout, ResponseError for an error reply.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import hiredis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int


def pack(*args: Arg) -> bytes:
    """One command in RESP (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


class _Connection(asyncio.Protocol):
    """One socket: requests queued in order, written once per loop iteration, each reply to the oldest waiter."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        self.loop = loop
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.parser = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.out: list[bytes] = []
        self.broken: Exception | None = None
        self.progress = 0.0  # loop time of the last reply (or of the first request after none were waiting)
        self._watch: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        self.progress = self.loop.time()
        try:
            while (reply := self.parser.gets()) is not False:
                waiter = self.waiting.popleft()
                if not waiter.done():
                    waiter.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # nothing more on this socket can be trusted
            self.fail(RedisConnectionError(f"Redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError("Connection to Redis lost."))

    def fail(self, error: Exception) -> None:
        if self.broken is None:
            self.broken = error
        if self.transport is not None:
            self.transport.abort()
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def call(self, command: bytes) -> asyncio.Future[Any]:
        if self.broken is not None:
            raise self.broken
        waiter = self.loop.create_future()
        if not self.waiting:
            self.progress = self.loop.time()
        self.waiting.append(waiter)
        if not self.out:
            self.loop.call_soon(self._flush)
        self.out.append(command)
        if self._watch is None and self.timeout:
            self._watch = self.loop.call_at(self.progress + self.timeout, self._check)
        return waiter

    def _flush(self) -> None:
        data = b"".join(self.out)
        self.out.clear()
        if self.transport is not None and self.broken is None:
            self.transport.write(data)

    def _check(self) -> None:
        """A timer, armed while requests wait: a connection silent for `timeout` with requests waiting is dropped."""
        self._watch = None
        if not self.waiting or self.broken is not None or self.timeout is None:
            return
        if self.loop.time() - self.progress >= self.timeout:
            self.fail(RedisTimeoutError("Timeout reading from Redis."))
        else:
            self._watch = self.loop.call_at(self.progress + self.timeout, self._check)


class PipelinedRedis:
    """EVALSHA of registered scripts over one auto-pipelined connection (made again after a failure)."""

    def __init__(self, kwargs: dict[str, Any], unix: bool) -> None:
        self.kwargs = kwargs
        self.unix = unix
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None

    @classmethod
    def for_client(cls, redis: AsyncRedis) -> PipelinedRedis | None:
        """A client to the same Redis as `redis` (its pool's settings), or None where only redis-py will do."""
        pool = redis.connection_pool
        kind = pool.connection_class
        if kind not in (Connection, UnixDomainSocketConnection):
            return None
        return cls(dict(pool.connection_kwargs), unix=kind is UnixDomainSocketConnection)

    async def call(self, *args: Arg) -> Any:
        """One command's reply (an error reply raises ResponseError)."""
        return (await self._retried(lambda conn: self._commands(conn, (), (), (args,))))[0]

    async def evalsha(self, sha: str, script: str, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """A script's reply by its sha1, loading it (EVAL) when Redis does not know it yet."""
        return (await self._retried(lambda conn: self._commands(conn, (sha, script), (*keys, *args), (), len(keys))))[0]

    async def evalsha_with(
        self, sha: str, script: str, keys: Sequence[Arg], args: Sequence[Arg], command: Sequence[Arg]
    ) -> tuple[Any, Any]:
        """A script's reply and another command's, sent together (one write; Redis runs them one after the other):
        what a script's own call would return, without its cost of converting the reply through Lua."""
        replies = await self._retried(
            lambda conn: self._commands(conn, (sha, script), (*keys, *args), (command,), len(keys))
        )
        return replies[0], replies[1]

    async def _retried(self, send: Callable[[_Connection], Awaitable[list[Any]]]) -> list[Any]:
        """`send` on the connection, once more on a new one when it broke meanwhile (Redis restarted, a proxy
        dropped it), as redis-py retries; a Redis that cannot be reached is not waited for."""
        conn = await self._connection()
        try:
            return await send(conn)
        except RedisConnectionError:
            return await send(await self._connection())

    @staticmethod
    async def _commands(
        conn: _Connection,
        script: tuple[str, str] | tuple[()],
        script_args: Sequence[Arg],
        commands: Sequence[Sequence[Arg]],
        numkeys: int = 0,
    ) -> list[Any]:
        """EVALSHA of `script` (sha, source; none if empty) then `commands`, written together; their replies."""
        waiters = [conn.call(pack("EVALSHA", script[0], numkeys, *script_args))] if script else []
        waiters += [conn.call(pack(*command)) for command in commands]
        replies = []
        try:
            for waiter in waiters:
                replies.append(await waiter)
        except BaseException:
            for waiter in waiters:  # the same failure: retrieved, not logged as never retrieved
                if waiter.done() and not waiter.cancelled():
                    waiter.exception()
            raise
        if script and isinstance(replies[0], hiredis.ReplyError) and str(replies[0]).startswith("NOSCRIPT"):
            replies[0] = await conn.call(pack("EVAL", script[1], numkeys, *script_args))
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise ResponseError(str(reply))
        return replies

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.broken is None and conn.loop is asyncio.get_running_loop():
            return conn
        if self._connecting is None or self._connecting.get_loop() is not asyncio.get_running_loop():
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            self._conn = await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None
        return self._conn

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        kw = self.kwargs
        conn = _Connection(loop, kw.get("socket_timeout"))
        try:
            async with asyncio.timeout(kw.get("socket_connect_timeout")):
                if self.unix:
                    await loop.create_unix_connection(lambda: conn, kw["path"])
                else:
                    await loop.create_connection(lambda: conn, kw.get("host", "localhost"), int(kw.get("port", 6379)))
                hello = []
                if kw.get("password") is not None:
                    user = [kw["username"]] if kw.get("username") else []
                    hello.append(conn.call(pack("AUTH", *user, kw["password"])))
                if kw.get("db"):
                    hello.append(conn.call(pack("SELECT", kw["db"])))
                for reply in await asyncio.gather(*hello):
                    if isinstance(reply, hiredis.ReplyError):
                        raise AuthenticationError(str(reply))
        except TimeoutError:  # asyncio's, on connecting (or on the first replies)
            conn.fail(RedisConnectionError("Timeout connecting to Redis."))
            raise RedisConnectionError("Timeout connecting to Redis.") from None
        except OSError as exc:
            raise RedisConnectionError(f"Error connecting to Redis: {exc}") from None
        except BaseException:
            conn.fail(RedisConnectionError("Connecting to Redis failed."))
            raise
        return conn
