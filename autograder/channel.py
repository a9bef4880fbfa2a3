"""The one-way channel from a sandboxed notebook run to the trusted grader.

The executor (inside the sandbox) writes length-prefixed JSON messages to a pipe that the
grader opened before the sandbox started; the grader reads them as they come. Nothing
the trusted side uses travels through a file the submission could touch: recorded
outputs, each executed cell and the run's status all arrive here, the moment they exist.

A message is ``{"kind": ..., ...}``: ``record`` (one case's outputs of one function, as
base64 ``.npz`` bytes), ``cell`` (an executed cell's outputs), ``flag`` (something the
grading guard saw), ``status`` (how the run ended). The reader caps the total and each
message; what goes past a cap is dropped and counted, never buffered.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
from dataclasses import dataclass, field

HEADER = struct.Struct(">I")


def send(fd: int, kind: str, **payload) -> None:
    """Write one message (blocking; the reader drains the pipe continuously)."""
    data = json.dumps({"kind": kind, **payload}).encode()
    view = memoryview(HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def encode_npz(arrays: dict) -> str:
    """Arrays -> base64 of a plain ``.npz`` (no pickle)."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return base64.b64encode(buffer.getvalue()).decode()


def decode_npz(text: str, max_bytes: int) -> dict:
    """base64 ``.npz`` -> arrays, refusing pickles and more than ``max_bytes`` of data."""
    import numpy as np

    raw = base64.b64decode(text, validate=True)
    if len(raw) > max_bytes:
        raise ValueError(f"{len(raw)} bytes (at most {max_bytes})")
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        total, arrays = 0, {}
        for key in z.files:
            arrays[key] = z[key]
            total += arrays[key].nbytes
            if total > max_bytes:
                raise ValueError(f"more than {max_bytes} bytes once unpacked")
        return arrays


@dataclass
class Inbox:
    """What the grader read from one run's channel."""

    max_bytes: int = 256 << 20
    max_message: int = 64 << 20
    messages: list[dict] = field(default_factory=list)
    received: int = 0
    dropped: int = 0
    malformed: int = 0

    def read_all(self, fd: int) -> None:
        """Read until the writer closes the pipe (or the run is killed)."""
        buffer = bytearray()
        need = None  # the pending message's length, once its header is in
        skipping = 0  # bytes of an oversized message still to discard
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return
            self.received += len(chunk)
            if skipping:
                cut = min(skipping, len(chunk))
                skipping -= cut
                chunk = chunk[cut:]
            buffer += chunk
            while True:
                if need is None:
                    if len(buffer) < HEADER.size:
                        break
                    (need,) = HEADER.unpack(buffer[:HEADER.size])
                    del buffer[:HEADER.size]
                    if need > self.max_message or self.received > self.max_bytes:
                        self.dropped += 1
                        cut = min(need, len(buffer))
                        skipping = need - cut
                        del buffer[:cut]
                        need = None
                        if skipping:
                            break
                        continue
                if len(buffer) < need:
                    break
                body = bytes(buffer[:need])
                del buffer[:need]
                need = None
                try:
                    message = json.loads(body)
                    if not isinstance(message, dict) or not isinstance(message.get("kind"), str):
                        raise ValueError
                    self.messages.append(message)
                except ValueError:
                    self.malformed += 1

    def of_kind(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m["kind"] == kind]
