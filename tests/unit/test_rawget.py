"""The chunked-body decoder of the raw archive GET (docker/rawget.py): pure logic.

The GET itself runs against the real engine in the integration tests (every
archive snapshot), and its faults (stall, cut, 500, a closed connection)
through tests/faultengine.py in tests/integration/test_engine_timeouts.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docksnap.docker.rawget import ChunkedDecoder, ProtocolError


def frame(parts: list[bytes], *, trailers: bytes = b"") -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p)
    return body + b"0\r\n" + trailers + b"\r\n"


def decode(stream: bytes, cuts: list[int]) -> tuple[bytes, bool]:
    decoder = ChunkedDecoder()
    out = bytearray()
    start = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        out += decoder.feed(memoryview(bytearray(stream[start:cut])))
        start = cut
    return bytes(out), decoder.done


@given(
    parts=st.lists(st.binary(min_size=1, max_size=300), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=30),
    trailers=st.sampled_from([b"", b"X-Trailer: 1\r\n", b"A: b\r\nC: d\r\n"]),
)
def test_any_framing_split_anywhere_gives_the_payload(
    parts: list[bytes], cuts: list[int], trailers: bytes
) -> None:
    stream = frame(parts, trailers=trailers)
    payload, done = decode(stream, [c for c in cuts if c < len(stream)])
    assert payload == b"".join(parts)
    assert done


def test_chunk_extensions_and_upper_case_sizes_are_read() -> None:
    stream = b"A;name=value\r\n0123456789\r\n0\r\n\r\n"
    assert decode(stream, [3, 15]) == (b"0123456789", True)


def test_bytes_after_the_last_chunk_are_ignored() -> None:
    assert decode(frame([b"abc"]) + b"garbage", []) == (b"abc", True)


def test_a_body_cut_short_is_not_done() -> None:
    stream = frame([b"abcdef"])
    assert decode(stream[:7], []) == (b"abcd", False)


@pytest.mark.parametrize(
    "stream",
    [
        b"zz\r\nab\r\n",  # not hex
        b"-1\r\n",  # signed
        b"0x3\r\nabc\r\n",  # a prefix
        b"\r\n",  # empty size
        b"11111111111111111\r\n",  # more than 64 bits
        b"3\nabc\r\n",  # LF without CR
        b"3\r\nabcd\r\n",  # payload longer than its size
        b"3" + b" " * 5000,  # a size line that never ends
    ],
)
def test_malformed_framing_is_a_protocol_error(stream: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(stream, [1])
