"""Zstd chunks decoded only when what they decode to is bounded: a store's chunk files are read
from disk, and a file of a few KB (a damaged or hostile store) can inflate to many GB.

A numeric chunk has a size its layout gives (`shared.store` refuses a layout beyond
`MAX_CHUNK_BYTES`), but Zarr decodes the compressed bytes whole before it compares them with it;
a string chunk (video ids, errors, tokens) has no size at all. numcodecs decodes a zstd stream
without a limit. So the zstd codec that Zarr picks for the "zstd" name is replaced here by one
that first reads the stream's frame and block headers (no decompression: a few bytes a 128 KiB
block) and refuses a stream that could decode to more than the bound (`ZstdBoundError`).
"""
from __future__ import annotations

import struct

import zarr
from zarr.codecs.zstd import ZstdCodec

__all__ = ['ZstdBoundError', 'decoded_bound', 'BoundedZstdCodec', 'install']

_MAGIC = 0xFD2FB528
#: the most a compressed block regenerates (RFC 8878: Block_Maximum_Size <= 128 KiB)
_BLOCK_MAX = 1 << 17


class ZstdBoundError(ValueError):
    """A zstd stream that may decode to more than a chunk may, or whose headers are no zstd."""


def decoded_bound(data: bytes | memoryview) -> int:
    """The most the zstd stream `data` (frames one after another, as numcodecs decodes them) can
    decode to, from its headers alone: raw and RLE blocks say what they regenerate, a compressed
    block at most 128 KiB. A ZstdBoundError for headers that are no zstd."""
    data = memoryview(data).cast('B')
    at, total = 0, 0
    while at < len(data):
        if len(data) - at < 4:
            raise ZstdBoundError('the stream ends inside a frame header')
        magic = struct.unpack_from('<I', data, at)[0]
        if magic & 0xFFFFFFF0 == 0x184D2A50:  # a skippable frame: decodes to nothing
            if len(data) - at < 8:
                raise ZstdBoundError('the stream ends inside a skippable frame header')
            at += 8 + struct.unpack_from('<I', data, at + 4)[0]
            continue
        if magic != _MAGIC:
            raise ZstdBoundError(f'no zstd frame at byte {at}')
        at += 4
        if at >= len(data):
            raise ZstdBoundError('the stream ends inside a frame header')
        fhd = data[at]
        single, checksum, dict_flag, fcs_flag = fhd >> 5 & 1, fhd >> 2 & 1, fhd & 3, fhd >> 6
        fcs_size = (1 if single else 0, 2, 4, 8)[fcs_flag]
        at += 1 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag] + fcs_size
        last = False
        while not last:
            if len(data) - at < 3:
                raise ZstdBoundError('the stream ends inside a block header')
            header = int.from_bytes(data[at:at + 3], 'little')
            last, kind, size = bool(header & 1), header >> 1 & 3, header >> 3
            at += 3
            if kind == 0:  # raw
                total, at = total + size, at + size
            elif kind == 1:  # RLE: one byte, repeated
                total, at = total + size, at + 1
            elif kind == 2:  # compressed
                total, at = total + _BLOCK_MAX, at + size
            else:
                raise ZstdBoundError(f'a block of the reserved type at byte {at - 3}')
        at += 4 * checksum
    return total


class BoundedZstdCodec(ZstdCodec):
    """Zarr's zstd codec, refusing a chunk that may decode to more than `limit` bytes (`install`)."""

    limit = 1 << 30

    def _decode_sync(self, chunk_bytes, chunk_spec):  # noqa: ANN001, ANN202 - Zarr's signature
        bound = decoded_bound(chunk_bytes.as_numpy_array())
        if bound > self.limit:
            raise ZstdBoundError(f'a zstd chunk of {len(chunk_bytes)} bytes that may decode to {bound >> 20} MiB, more '
                                 f'than the {self.limit >> 20} MiB a chunk may: the file is damaged or forged')
        return super()._decode_sync(chunk_bytes, chunk_spec)


def install(limit: int) -> None:
    """Make Zarr decode every "zstd" chunk of this process with `BoundedZstdCodec` at `limit` bytes
    (for arrays opened from here on: Zarr picks a codec's class when it reads an array's metadata)."""
    BoundedZstdCodec.limit = limit
    zarr.registry.register_codec('zstd', BoundedZstdCodec)
    zarr.config.set({'codecs.zstd': f'{BoundedZstdCodec.__module__}.{BoundedZstdCodec.__qualname__}'})
