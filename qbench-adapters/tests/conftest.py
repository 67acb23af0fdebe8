"""Shared fixtures: fabricated image trees and a local HTTP server with Range support."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from PIL import Image
from qbench.types import ModelBundle
from qbench_adapters.imagenet import imagenet1k_class_index


class MeanPixel:
    """Transform: an image -> tensor [1, 1, 1] holding its mean grey level (0..255)."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        data = torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32))
        return data.mean().reshape(1, 1, 1)


@pytest.fixture
def imagenet_bundle() -> ModelBundle:
    """A stand-in ImageNet-1k model bundle (no 11 M-parameter model needed to test data)."""
    return ModelBundle(
        model=torch.nn.Identity(),
        name="fake1k",
        transform=MeanPixel(),
        num_classes=1000,
        class_index=imagenet1k_class_index(),
    )


@pytest.fixture
def plain_bundle() -> ModelBundle:
    return ModelBundle(
        model=torch.nn.Identity(), name="plain", transform=MeanPixel(), num_classes=10
    )


@dataclass
class ServerState:
    """What the test server serves and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    interrupt_first: int | None = None  # bytes to send before dropping the first GET
    interrupt_every: int | None = None  # bytes to send before dropping every GET
    honour_range: bool = True
    send_length: bool = True  # False: no Content-Length, the body ends when the connection does
    refuse_range: str | None = None  # answer every Range request 416: "no-total" or "total"
    requests: list[dict[str, str | None]] = field(default_factory=list)


class _Handler(http.server.BaseHTTPRequestHandler):
    state: ServerState

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        state = self.server.state  # type: ignore[attr-defined]
        state.requests.append({"path": self.path, "range": self.headers.get("Range")})
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        header = self.headers.get("Range")
        if header and state.refuse_range:
            self.send_response(416)
            if state.refuse_range == "total":
                self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if header and state.honour_range:
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if state.send_length:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if state.interrupt_first is not None or state.interrupt_every is not None:
            cut = (
                state.interrupt_first
                if state.interrupt_first is not None
                else state.interrupt_every
            )
            state.interrupt_first = None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def http_server() -> Iterator[tuple[str, ServerState]]:
    """``(base_url, state)`` of a threaded HTTP server on 127.0.0.1 (a free port)."""
    state = ServerState()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
