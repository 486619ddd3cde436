"""Reading and writing point sets as OBJ and PLY files (vertices only; faces are ignored).

Points come back as float32 arrays of shape (N, 3). Every problem with a file is raised
as a one-line `InputError` naming the file; writes are atomic (temp file + `os.replace`).
OBJ is our own code; PLY is read and written by the `plyfile` library.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement, PlyElementParseError, PlyHeaderParseError, PlyListProperty

from holly_jax.atomic import write_atomic
from holly_jax.errors import InputError

PathLike = str | os.PathLike

# ----------------------------------------------------------------------------- reading


def read_points(path: PathLike) -> np.ndarray:
    """Vertices of an .obj or .ply file as float32 (N, 3); raises InputError on bad input."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".obj", ".ply"):
        raise InputError(path, f"unsupported point file type '{suffix or '(none)'}' (use .obj or .ply)")
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except OSError as e:
        raise InputError(path, f"cannot read file ({e.strerror or e})") from None
    points_Nx3 = _parse_obj(path, data) if suffix == ".obj" else _parse_ply(path, data)
    return _checked(path, points_Nx3)


def _checked(path: PathLike, points_Nx3: np.ndarray) -> np.ndarray:
    """Rejects empty or non-finite point sets; returns float32 (N, 3)."""
    points_Nx3 = np.asarray(points_Nx3)
    if points_Nx3.ndim != 2 or points_Nx3.shape[1] != 3:
        raise InputError(path, f"points must have shape (N, 3), got {points_Nx3.shape}")
    if points_Nx3.shape[0] == 0:
        raise InputError(path, "no vertices")
    finite = np.isfinite(points_Nx3).all(axis=1)
    if not finite.all():
        k = int(np.argmin(finite)) + 1
        raise InputError(path, f"non-finite coordinates (NaN or inf) at vertex {k}")
    points_Nx3 = points_Nx3.astype(np.float32)
    if not np.isfinite(points_Nx3).all():  # finite doubles beyond float32 range
        k = int(np.argmin(np.isfinite(points_Nx3).all(axis=1))) + 1
        raise InputError(path, f"non-finite coordinates (NaN or inf) at vertex {k} (too large for float32)")
    return points_Nx3


def _parse_obj(path: PathLike, data: bytes) -> np.ndarray:
    """`v x y z [w | r g b]` lines only; everything else in an OBJ is ignored."""
    rows = []
    for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] != "v":
            continue
        if len(fields) < 4:
            raise InputError(path, f"line {lineno}: vertex has fewer than 3 coordinates")
        try:
            values = [float(f) for f in fields[1:]]
        except ValueError:
            bad = next(f for f in fields[1:] if not _is_float(f))
            raise InputError(path, f"line {lineno}: non-numeric field '{bad}' in vertex") from None
        rows.append(values[:3])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# PLY goes through the plyfile library (pinned in requirements.txt); its errors become one-line InputErrors.
# Bytes 128-255 become '?', so a non-ASCII comment in a header cannot stop plyfile's ASCII decoding.
_ASCII_ONLY = bytes(range(128)) + b"?" * 128
_END_HEADER = re.compile(rb"(?:^|[\r\n])(end_header)([ \t]*)(?=[\r\n]|$)")
_ASCII_FORMAT = re.compile(rb"(?:^|[\r\n])[ \t]*format[ \t]+ascii[ \t\r\n]")
_PLY_TYPE_ERROR = re.compile(r"field type '([^']*)' not in")


class _AsciiPly(io.TextIOWrapper):
    """An ASCII PLY as the text stream plyfile reads line by line: blank data lines are skipped
    (plyfile would take one for an item) and the line last read is kept for error messages."""

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data), encoding="ascii", errors="replace", newline=None)
        self.lines_read = 0  # newlines consumed so far (header included)
        self.lineno = 0  # number of the line readline last returned (0: none yet)
        self.line = ""

    def read(self, size: int | None = -1) -> str:
        text = super().read(size)
        self.lines_read += text.count("\n")
        return text

    def readline(self, size: int = -1) -> str:
        while True:
            line = super().readline(size)
            if not line:
                return line
            self.lineno, self.line = self.lines_read + 1, line
            self.lines_read += line.count("\n")
            if line.strip():
                return line


def _parse_ply(path: PathLike, data: bytes) -> np.ndarray:
    """Vertex x, y, z of an ASCII or binary PLY read by plyfile; other elements and properties are ignored."""
    end = _END_HEADER.search(data)
    head = data if end is None else data[: end.start(1)]  # the header, or all of a file without one
    if end is not None and end[2]:  # plyfile wants 'end_header' alone on its line
        data = head + b"end_header" + data[end.end() :]
    if not head.isascii():
        head = head.translate(_ASCII_ONLY)
        data = head + data[len(head) :]
    stream = _AsciiPly(data) if _ASCII_FORMAT.search(head) else io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy's overflow / empty-list warnings; errors are checked below
            ply = PlyData.read(stream, mmap=False)
    except PlyHeaderParseError as e:
        raise InputError(path, _header_problem(e, head)) from None
    except PlyElementParseError as e:
        raise InputError(path, _element_problem(e, stream)) from None
    except MemoryError as e:
        raise InputError(path, f"PLY element counts too large to read ({e})") from None
    except (ValueError, TypeError, IndexError, KeyError, EOFError, OverflowError, UnicodeError) as e:
        where = f"line {stream.lineno}: " if isinstance(stream, _AsciiPly) and stream.lineno else ""
        raise InputError(path, f"{where}malformed PLY ({e})") from None
    if "vertex" not in ply:
        raise InputError(path, "no vertices (PLY header has no 'element vertex')")
    vertex = ply["vertex"]
    for axis in ("x", "y", "z"):
        if axis not in vertex:
            raise InputError(path, f"PLY vertex element has no '{axis}' property")
        if isinstance(vertex.ply_property(axis), PlyListProperty):
            raise InputError(path, f"PLY vertex property '{axis}' is a list, not a number")
    return np.stack([np.asarray(vertex[axis], dtype=np.float64) for axis in ("x", "y", "z")], axis=1)


def _header_problem(e: PlyHeaderParseError, head: bytes) -> str:
    """plyfile's header error as our message, quoting the header line it names."""
    lines = re.split(rb"\r\n|\r|\n", head)
    n = e.line if isinstance(e.line, int) else 0
    text = lines[n - 1].decode("ascii").strip() if 0 < n <= len(lines) else ""
    words = text.split()
    if e.message in ("expected 'ply'", "unexpected characters after 'ply'"):
        return "not a PLY file (first line is not 'ply')"
    if e.message == "early end-of-file":
        return "PLY header has no end_header (the file ends inside the header)"
    if e.message.startswith("don't understand format") or e.message == "expected version '1.0'":
        return f"line {n}: unsupported PLY format '{' '.join(words[1:])}'"
    if words[:1] == ["property"] and not e.message.startswith("expected one of"):
        bad_type = _PLY_TYPE_ERROR.match(e.message)
        reason = f"'{bad_type[1]}' is not a PLY type" if bad_type else e.message
        return f"line {n}: unsupported property '{text}' ({reason})"
    return f"line {n}: bad PLY header line '{text}' ({e.message})"


def _element_problem(e: PlyElementParseError, stream: io.IOBase) -> str:
    """plyfile's data error as our message; ASCII files get the line number and the bad field."""
    name = e.element.name if e.element is not None else "?"
    count = e.element.count if e.element is not None else 0
    what = "vertex" if name == "vertex" else f"'{name}' item"
    if e.message == "early end-of-file":
        declared = "vertices" if name == "vertex" else f"'{name}' items"
        return f"truncated PLY: {count} {declared} declared, {e.row or 0} found"
    if not isinstance(stream, _AsciiPly):
        return f"PLY element '{name}' item {(e.row or 0) + 1}: {e.message}"
    where = f"line {stream.lineno}"
    if e.message == "malformed input":
        bad = next((f for f in stream.line.split() if not _is_float(f)), None)
        if bad is not None:
            return f"{where}: non-numeric field '{bad}' in {what}"
        prop = f" '{e.prop.name}'" if e.prop is not None else ""
        return f"{where}: bad value for property{prop} in {what}"
    if e.message == "early end-of-line":
        return f"{where}: {what} has too few fields"
    if e.message == "expected end-of-line":
        return f"{where}: {what} has too many fields"
    return f"{where}: {e.message} in {what}"


# ----------------------------------------------------------------------------- writing


def write_points(path: PathLike, points_Nx3: np.ndarray, binary: bool = False) -> None:
    """Writes an .obj or .ply file by suffix (`binary` applies to PLY only)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".obj":
        write_obj(path, points_Nx3)
    elif suffix == ".ply":
        write_ply(path, points_Nx3, binary=binary)
    else:
        raise InputError(path, f"unsupported point file type '{suffix or '(none)'}' (use .obj or .ply)")


def write_obj(path: PathLike, points_Nx3: np.ndarray) -> None:
    """`v x y z` lines (6 decimals) under a one-line comment, written atomically."""
    points_Nx3 = _checked(path, np.asarray(points_Nx3, dtype=np.float64))
    lines = [f"# holly-jax {len(points_Nx3)} vertices"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in points_Nx3.tolist()]
    write_atomic(path, ("\n".join(lines) + "\n").encode("ascii"))


def write_ply(path: PathLike, points_Nx3: np.ndarray, binary: bool = False) -> None:
    """PLY (via plyfile) with float32 x, y, z: ASCII (each float32 exactly) or binary little-endian, atomically."""
    points_Nx3 = _checked(path, np.asarray(points_Nx3, dtype=np.float64))
    vertices = np.empty(len(points_Nx3), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    vertices["x"], vertices["y"], vertices["z"] = points_Nx3.T
    ply = PlyData([PlyElement.describe(vertices, "vertex")], text=not binary, byte_order="<", comments=["holly-jax"])
    buffer = io.BytesIO()
    ply.write(buffer)
    write_atomic(path, buffer.getvalue())
