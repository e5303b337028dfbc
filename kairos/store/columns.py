"""Column building blocks: append-only chunked arrays, growable arrays, string
dictionaries, and the tagged encoding of JSON values into fixed-width columns.

A property value is stored as a (tag int8, value float64) pair: numbers as themselves,
strings as their dictionary code, composites (lists, objects) as an index into a side
table of msgpack blobs. Nine bytes whatever the type, and numeric filters run on the
float column directly.
"""

from __future__ import annotations

import sys
from typing import Any, Iterator

import msgspec
import numpy as np

CHUNK_ROWS = 1 << 16
_FIRST_CAPACITY = 256

TAG_MISSING, TAG_INT, TAG_FLOAT, TAG_STR, TAG_BOOL, TAG_NULL, TAG_OTHER = range(7)
_MAX_EXACT_INT = 1 << 53


class ChunkedArray:
    """An append-only column stored as fixed-size chunks.

    Full chunks are never copied again, and only the last chunk has spare capacity,
    so the memory held stays within a few percent of the data at any size.
    """

    __slots__ = ("dtype", "_sealed", "_tail", "_tail_len")

    def __init__(self, dtype: Any) -> None:
        self.dtype = np.dtype(dtype)
        self._sealed: list[np.ndarray] = []
        self._tail = np.empty(0, self.dtype)
        self._tail_len = 0

    def __len__(self) -> int:
        return len(self._sealed) * CHUNK_ROWS + self._tail_len

    def extend(self, values: Any) -> None:
        arr = np.asarray(values, dtype=self.dtype)
        while arr.size:
            if self._tail_len == CHUNK_ROWS:
                self._sealed.append(self._tail)
                self._tail = np.empty(0, self.dtype)
                self._tail_len = 0
            take = arr[: CHUNK_ROWS - self._tail_len]
            need = self._tail_len + take.size
            if need > self._tail.size:
                capacity = max(_FIRST_CAPACITY, self._tail.size)
                while capacity < need:
                    capacity *= 2
                grown = np.empty(min(capacity, CHUNK_ROWS), self.dtype)
                grown[: self._tail_len] = self._tail[: self._tail_len]
                self._tail = grown
            self._tail[self._tail_len : need] = take
            self._tail_len = need
            arr = arr[take.size :]

    def __getitem__(self, row: int) -> Any:
        chunk, offset = divmod(row, CHUNK_ROWS)
        if chunk < len(self._sealed):
            return self._sealed[chunk][offset]
        if chunk == len(self._sealed) and offset < self._tail_len:
            return self._tail[offset]
        raise IndexError(row)

    def chunks(self, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, view) per chunk, from the chunk holding `start` on."""
        for index in range(start // CHUNK_ROWS, len(self._sealed) + 1):
            if index < len(self._sealed):
                yield index * CHUNK_ROWS, self._sealed[index]
            elif self._tail_len:
                yield index * CHUNK_ROWS, self._tail[: self._tail_len]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Values at the given rows (any order)."""
        out = np.empty(rows.size, self.dtype)
        chunk_of = rows // CHUNK_ROWS
        for chunk in np.unique(chunk_of):
            sel = chunk_of == chunk
            source = self._sealed[chunk] if chunk < len(self._sealed) else self._tail
            out[sel] = source[rows[sel] % CHUNK_ROWS]
        return out

    @property
    def sealed(self) -> list[np.ndarray]:
        """The full chunks, oldest first. They never change again, so a snapshot stores
        each one once."""
        return self._sealed

    def tail(self) -> np.ndarray:
        return self._tail[: self._tail_len]

    @classmethod
    def from_parts(cls, dtype: Any, sealed: list[np.ndarray], tail: np.ndarray) -> "ChunkedArray":
        column = cls(dtype)
        column._sealed = list(sealed)  # read-only views are fine: sealed chunks are never written
        column.extend(tail)  # copied: the tail keeps growing
        return column

    def searchsorted(self, values: np.ndarray) -> np.ndarray:
        """`np.searchsorted` over the whole column, for a column in ascending order,
        without concatenating it: locate each value's chunk by the chunks' first values."""
        parts = list(self.chunks())
        out = np.zeros(values.size, dtype=np.int64)
        if not parts:
            return out
        firsts = np.array([chunk[0] for _, chunk in parts])
        which = np.maximum(np.searchsorted(firsts, values, side="right") - 1, 0)
        for index in np.unique(which):
            selected = which == index
            offset, chunk = parts[index]
            out[selected] = offset + np.searchsorted(chunk, values[selected])
        return out

    def to_numpy(self) -> np.ndarray:
        parts = self._sealed + ([self._tail[: self._tail_len]] if self._tail_len else [])
        return np.concatenate(parts) if parts else np.empty(0, self.dtype)

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self._sealed) + self._tail.nbytes


class GrowableArray:
    """A mutable column indexed by user: set and read by position, grows by doubling."""

    __slots__ = ("_data", "_len", "_fill")

    def __init__(self, dtype: Any, fill: Any = 0) -> None:
        self._data = np.full(_FIRST_CAPACITY, fill, dtype=dtype)
        self._len = 0
        self._fill = fill

    def __len__(self) -> int:
        return self._len

    def resize(self, length: int) -> None:
        if length > self._data.size:
            capacity = self._data.size
            while capacity < length:
                capacity *= 2
            grown = np.full(capacity, self._fill, dtype=self._data.dtype)
            grown[: self._len] = self._data[: self._len]
            self._data = grown
        self._len = max(self._len, length)

    @property
    def values(self) -> np.ndarray:
        """A live view of the used part: writes through it change the column."""
        return self._data[: self._len]

    @classmethod
    def from_numpy(cls, arr: np.ndarray, fill: Any = 0) -> "GrowableArray":
        column = cls(arr.dtype, fill)
        column.resize(arr.size)
        column._data[: arr.size] = arr
        return column

    @property
    def nbytes(self) -> int:
        return self._data.nbytes


class StringTable:
    """Dictionary encoding: each distinct string is stored once and referred to by code."""

    __slots__ = ("codes", "values")

    def __init__(self, values: list[str] | None = None) -> None:
        self.values: list[str] = list(values or [])
        self.codes: dict[str, int] = {s: i for i, s in enumerate(self.values)}

    def code(self, text: str) -> int:
        code = self.codes.get(text)
        if code is None:
            code = self.codes[text] = len(self.values)
            self.values.append(text)
        return code

    def find(self, text: str) -> int | None:
        """The code of a string already seen, without adding it (for queries)."""
        return self.codes.get(text)

    @property
    def nbytes(self) -> int:
        strings = sum(sys.getsizeof(s) for s in self.values)
        return strings + sys.getsizeof(self.codes) + sys.getsizeof(self.values)


class ValueCodec:
    """Encodes JSON values to (tag, float64) and back, sharing one string table and
    one side table of composite values."""

    __slots__ = ("strings", "others")

    def __init__(self, strings: StringTable, others: list[bytes] | None = None) -> None:
        self.strings = strings
        self.others: list[bytes] = others if others is not None else []

    def encode(self, value: Any) -> tuple[int, float]:
        kind = type(value)
        if kind is str:
            return TAG_STR, float(self.strings.code(value))
        if kind is bool:
            return TAG_BOOL, 1.0 if value else 0.0
        if kind is int and -_MAX_EXACT_INT < value < _MAX_EXACT_INT:
            return TAG_INT, float(value)
        if kind is float:
            return TAG_FLOAT, value
        if value is None:
            return TAG_NULL, 0.0
        self.others.append(msgspec.msgpack.encode(value))
        return TAG_OTHER, float(len(self.others) - 1)

    def decode(self, tag: int, value: float) -> Any:
        if tag == TAG_STR:
            return self.strings.values[int(value)]
        if tag == TAG_INT:
            return int(value)
        if tag == TAG_FLOAT:
            return float(value)
        if tag == TAG_BOOL:
            return value != 0.0
        if tag == TAG_NULL:
            return None
        if tag == TAG_OTHER:
            return msgspec.msgpack.decode(self.others[int(value)])
        raise KeyError(f"no value (tag {tag})")

    @property
    def others_nbytes(self) -> int:
        return sum(sys.getsizeof(b) for b in self.others) + sys.getsizeof(self.others)
