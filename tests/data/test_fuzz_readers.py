"""Fuzzing the readers: random bytes, truncations of every supported format, decompression bombs, zero-sized
images and manifests with random cells. Each gives a one-line LesiondiffError naming the file, or reads
cleanly; never another exception, a traceback or a hang."""

import io
import random
import signal
import struct
import zlib
from contextlib import contextmanager

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from lesiondiff.data.io import read_image, read_mask
from lesiondiff.data.manifest import Manifest
from lesiondiff.errors import LesiondiffError

PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".tif": "TIFF", ".bmp": "BMP", ".gif": "GIF", ".webp": "WEBP"}
VOLUME_FORMATS = (".nii.gz", ".nii", ".mha", ".nrrd")


@contextmanager
def deadline(seconds: int):
    def fail(*_):
        raise AssertionError(f"reader hung for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def valid_bytes(suffix: str) -> bytes:
    rng = np.random.default_rng(0)
    if suffix in PIL_FORMATS:
        buf = io.BytesIO()
        Image.fromarray((rng.random((40, 48)) * 255).astype(np.uint8)).save(buf, PIL_FORMATS[suffix])
        return buf.getvalue()
    raise ValueError(suffix)


def write_volume(path):
    img = sitk.GetImageFromArray((np.random.default_rng(0).random((3, 20, 24)) * 100).astype(np.int16))
    sitk.WriteImage(img, str(path))
    return path.read_bytes()


def assert_clean(reader, path):
    """The reader returns an array or raises a one-line LesiondiffError that names the file."""
    with deadline(20):
        try:
            out = reader(path)
        except LesiondiffError as exc:
            text = str(exc)
            assert path.name in text and "\n" not in text, text
            return None
    assert isinstance(out, np.ndarray) and out.size > 0
    return out


def readers(path):
    volume = any(path.name.endswith(s) for s in VOLUME_FORMATS)
    if volume:
        return [lambda p: read_image(p, slice_index=1), lambda p: read_mask(p, slice_index=1)]
    return [read_image, read_mask]


@pytest.mark.parametrize("suffix", [*PIL_FORMATS, *VOLUME_FORMATS])
def test_truncations_and_bit_flips_of_every_format(suffix, tmp_path):
    path = tmp_path / f"x{suffix}"
    data = write_volume(path) if suffix in VOLUME_FORMATS else valid_bytes(suffix)
    rng = random.Random(suffix)
    cuts = sorted({0, 1, 7, len(data) // 3, len(data) // 2, len(data) - 1, *rng.sample(range(len(data)), 5)})
    for cut in cuts:
        path.write_bytes(data[:cut])
        for reader in readers(path):
            assert_clean(reader, path)
    for _ in range(8):
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 20)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        path.write_bytes(bytes(flipped))
        for reader in readers(path):
            assert_clean(reader, path)


@pytest.mark.parametrize("suffix", [*PIL_FORMATS, ".nii.gz", ".mha"])
def test_random_bytes_with_an_image_suffix(suffix, tmp_path):
    rng = random.Random(1)
    for n in (0, 1, 16, 1000, 50000):
        path = tmp_path / f"r{n}{suffix}"
        path.write_bytes(bytes(rng.randrange(256) for _ in range(n)))
        for reader in readers(path):
            assert_clean(reader, path)


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with a tiny compressed body (a decompression bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = zlib.compress(b"\x00" * (width + 1) * min(height, 64), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (2**31 - 1, 2), (0, 10), (10, 0)])
def test_huge_or_zero_declared_sizes_are_refused_quickly(width, height, tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_with_header(width, height))
    for reader in (read_image, read_mask):
        with deadline(10):
            with pytest.raises(LesiondiffError) as info:
                reader(path)
        assert "bomb.png" in str(info.value) and "\n" not in str(info.value)


CELLS = ["", " ", "x", "-1", "999", "1e309", "nan", "train", "fold:x", "a;b;;", "../../etc/passwd", "\x00",
         "\"quoted, comma\"", "ünïcode", "C:\\\\win\\\\path.png", "0", "99999999999999999999"]


def test_manifests_with_random_cells_give_one_line_errors_or_read(tmp_path):
    rng = random.Random(2)
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    header = ["id", "image", "masks", "label", "case", "dataset", "split", "fold"]
    good = ["a", str(img), str(img), "benign", "a", "toy", "train", "-1"]
    for trial in range(150):
        row = list(good)
        for _ in range(rng.randint(1, 3)):
            row[rng.randrange(len(row))] = rng.choice(CELLS)
        cols = header if trial % 10 else rng.sample(header, rng.randint(1, len(header)))
        text = ",".join(cols) + "\n" + ",".join(row[: len(cols)] if trial % 7 else row + ["extra"]) + "\n"
        path = tmp_path / f"m{trial}.csv"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        with deadline(10):
            try:
                manifest = Manifest.read(path)
                manifest.select("train")
                manifest.select("fold:0") if "fold" in cols else None
            except LesiondiffError as exc:
                assert "\n" not in str(exc) and path.name in str(exc), str(exc)
