"""Fuzzing the controller's side of the helper protocol with whatever a host might send back.

``HelperClient`` reads a real asyncio stream fed with arbitrary bytes: during the bootstrap
handshake, and as replies and events after it. Whatever arrives, ``start`` and ``call`` either
succeed with a dict or raise a ``DispatcherError`` subclass, and nothing hangs: the stream ends.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.errors import DispatcherError, ProtocolError
from dispatcher.remote import protocol
from dispatcher.remote.client import HelperClient

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HELLO = {"event": "hello", "version": protocol.PROTOCOL_VERSION, "pid": 1, "state_dir": "/s"}
#: Generous: everything here is in memory and ends at EOF; this only stops a hang.
LIMIT = 10.0


class Sink:
    """The writer half: keeps what the client sends (requests, maybe the helper's source)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None

    def write_eof(self) -> None:
        return None

    def close(self) -> None:
        return None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=10,
)
MESSAGES = st.fixed_dictionaries(
    {},
    optional={
        "id": st.sampled_from([1, 2, True, 1.0, "1", None]) | JSON,
        "ok": JSON,
        "error": JSON,
        "event": st.sampled_from(["exit", "hello"]) | JSON,
        "run": JSON,
        "version": st.just(protocol.PROTOCOL_VERSION) | JSON,
    },
)
LINES = st.one_of(
    MESSAGES.map(lambda m: json.dumps(m).encode() + b"\n"),
    JSON.map(lambda v: json.dumps(v).encode() + b"\n"),
    st.binary(max_size=60),
    st.sampled_from([b"have\n", b"need\n", b"\n", b"[" * 5000 + b"\n", b'{"id": 1, "ok": tru']),
)
STREAMS = st.lists(LINES, max_size=8).map(b"".join)


async def start_on(data: bytes) -> tuple[HelperClient, asyncio.StreamReader]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    return HelperClient("fuzzhost", reader, Sink()), reader


async def handshake(data: bytes) -> None:
    client, reader = await start_on(data)
    reader.feed_eof()
    try:
        hello = await client.start(timeout=LIMIT)
    except DispatcherError as err:
        assert "fuzzhost" in str(err), err  # the message names the host
        return
    finally:
        await client.close()
    assert isinstance(hello, dict) and hello.get("event") == "hello"


@FUZZ
@given(STREAMS | st.binary(max_size=300))
def test_any_bytes_during_the_handshake(data: bytes) -> None:
    asyncio.run(handshake(data))


@FUZZ
@given(st.lists(LINES, max_size=5).map(b"".join), STREAMS)
def test_any_bytes_around_a_valid_hello(before: bytes, after: bytes) -> None:
    asyncio.run(handshake(before + b"have\n" + json.dumps(HELLO).encode() + b"\n" + after))


async def exchange(replies: bytes) -> None:
    client, reader = await start_on(b"need\n" + json.dumps(HELLO).encode() + b"\n")
    try:
        await client.start(timeout=LIMIT)
        call = asyncio.ensure_future(client.call("ping", timeout=LIMIT))
        await asyncio.sleep(0)  # the request is registered and sent before the replies arrive
        reader.feed_data(replies)
        reader.feed_eof()
        try:
            reply = await call
        except DispatcherError as err:
            assert "fuzzhost" in str(err), err
        else:
            assert isinstance(reply, dict) and reply.get("ok"), reply
        # Events are handed on as they came: dicts, which HostSession checks field by field.
        while not client.events.empty():
            assert isinstance(client.events.get_nowait(), dict)
        # After the stream ended, further calls fail at once with our error.
        try:
            await client.call("ping", timeout=LIMIT)
        except DispatcherError:
            pass
        else:
            raise AssertionError("a call succeeded on a closed stream")
    finally:
        await client.close()


@FUZZ
@given(STREAMS)
def test_any_replies_and_events_after_the_handshake(replies: bytes) -> None:
    asyncio.run(exchange(replies))


def test_a_reply_to_the_call_is_returned() -> None:
    # The harness itself works: a proper reply arrives as the call's result.
    async def main() -> dict[str, Any]:
        client, reader = await start_on(b"have\n" + json.dumps(HELLO).encode() + b"\n")
        await client.start(timeout=LIMIT)
        call = asyncio.ensure_future(client.call("ping", timeout=LIMIT))
        await asyncio.sleep(0)
        reader.feed_data(b'{"id": 1, "ok": true, "x": 5}\n')
        reply = await call
        await client.close()
        return reply

    assert asyncio.run(main()) == {"id": 1, "ok": True, "x": 5}


DEEP = b"[" * 100_000 + b"\n"


def test_a_deeply_nested_hello_is_a_protocol_error() -> None:
    async def main() -> None:
        client, reader = await start_on(b"have\n" + DEEP)
        reader.feed_eof()
        with pytest.raises(ProtocolError, match="fuzzhost: expected the helper's hello"):
            await client.start(timeout=LIMIT)
        await client.close()

    asyncio.run(main())


def test_a_deeply_nested_reply_is_a_protocol_error() -> None:
    async def main() -> None:
        client, reader = await start_on(b"have\n" + json.dumps(HELLO).encode() + b"\n")
        await client.start(timeout=LIMIT)
        call = asyncio.ensure_future(client.call("ping", timeout=LIMIT))
        await asyncio.sleep(0)
        reader.feed_data(DEEP)
        with pytest.raises(ProtocolError, match="fuzzhost: protocol violation: a line that is not"):
            await call
        await client.close()

    asyncio.run(main())
