"""Benchmark peer: a loopback `_bulk` endpoint that answers every item 201 (optionally late).

Not an Elasticsearch and not a test of one: it costs as little as possible so the benchmark
measures the shipper. `BULK_DELAY_S` delays every bulk answer.
"""

import asyncio
import os
from typing import Any

DELAY = float(os.environ.get("BULK_DELAY_S", "0"))
HEADERS = [(b"content-type", b"application/json"), (b"x-elastic-product", b"Elasticsearch")]
INFO = b'{"name":"bench","version":{"number":"9.1.0","build_flavor":"default"}}'
_answers: dict[int, bytes] = {}


def answer(items: int) -> bytes:
    if items not in _answers:
        _answers[items] = (b'{"errors":false,"items":['
                           + b",".join([b'{"create":{"status":201}}'] * items) + b"]}")
    return _answers[items]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    if scope["path"].endswith("_bulk"):
        body = b"".join(chunks)
        if DELAY:
            await asyncio.sleep(DELAY)
        out = answer(body.count(b"\n") // 2)
    else:
        out = INFO
    await send({"type": "http.response.start", "status": 200,
                "headers": [*HEADERS, (b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})
