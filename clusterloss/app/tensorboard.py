"""TensorBoard logs without TensorFlow: `EpochScalars` writes each epoch's logs as scalars
in TensorBoard's event-file format (TFRecord framing of `Event` protocol buffers, written by
hand), so `--tensorboard` works on every backend; viewing needs only
`pip install tensorboard`.

Like `keras.callbacks.TensorBoard`: `logs/train/` holds `epoch_<key>` for the training
keys, `logs/validation/` the `val_*` keys without the prefix, so each metric's two curves
share a chart.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

import keras


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> bytes:
    crc = crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int, summary: bytes = b"", file_version: str = "") -> bytes:
    out = b"\x09" + struct.pack("<d", time.time()) + b"\x10" + _varint(step)  # wall_time, step
    if file_version:
        out += _field(3, file_version.encode())
    if summary:
        out += _field(5, summary)
    return out


def _scalar(tag: str, value: float) -> bytes:
    """A `Summary.Value` with `tag` and `simple_value`."""
    return _field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", value))


class EventFile:
    """One TensorBoard event file in `directory` (created): `add_scalars(step, {tag: v})`."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.v2"
        self.path = directory / name
        self._write(_event(0, file_version="brain.Event:2"))

    def _write(self, record: bytes) -> None:
        header = struct.pack("<Q", len(record))
        with open(self.path, "ab") as handle:
            handle.write(header + _masked_crc(header) + record + _masked_crc(record))

    def add_scalars(self, step: int, values: dict[str, float]) -> None:
        summary = b"".join(_scalar(tag, float(v)) for tag, v in values.items())
        if summary:
            self._write(_event(step, summary))


class EpochScalars(keras.callbacks.Callback):
    """Each epoch's logs to `log_dir/train` and `log_dir/validation` (see the module
    docstring). List it after `RetrievalEvaluation` so that its keys are there."""

    def __init__(self, log_dir: str | Path):
        super().__init__()
        self.log_dir = Path(log_dir)
        self._files: dict[str, EventFile] = {}

    def _file(self, part: str) -> EventFile:
        if part not in self._files:
            self._files[part] = EventFile(self.log_dir / part)
        return self._files[part]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        parts: dict[str, dict[str, float]] = {"train": {}, "validation": {}}
        for key, value in (logs or {}).items():
            part = "validation" if key.startswith("val_") else "train"
            parts[part]["epoch_" + key.removeprefix("val_")] = value
        for part, values in parts.items():
            if values:
                self._file(part).add_scalars(epoch, values)
