"""Reading and writing point sets as OBJ and PLY files (vertices only; faces are ignored).

Points come back as float32 arrays of shape (N, 3). Every problem with a file is raised
as a one-line `InputError` naming the file; writes are atomic (temp file + `os.replace`).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from holly_jax.atomic import write_atomic
from holly_jax.errors import InputError

PathLike = str | os.PathLike

# PLY scalar type names (both spellings) -> numpy type code without byte order.
_PLY_TYPES = {
    "char": "i1", "int8": "i1",
    "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4",
    "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4",
    "double": "f8", "float64": "f8",
}
_PLY_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
_END_HEADER = re.compile(rb"(?:^|\n)end_header[ \t]*(?:\r?\n|$)")


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


def _parse_ply_header(path: PathLike, header: str) -> tuple[str, list[dict]]:
    """The format name and the elements [{name, count, props: [(name, type | None)]}]."""
    lines = header.splitlines()
    if not lines or lines[0].strip() != "ply":
        raise InputError(path, "not a PLY file (first line is not 'ply')")
    fmt, elements = None, []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields or fields[0] in ("comment", "obj_info", "end_header"):
            continue
        if fields[0] == "format":
            if len(fields) < 2 or fields[1] not in _PLY_FORMATS:
                raise InputError(path, f"line {lineno}: unsupported PLY format '{' '.join(fields[1:])}'")
            fmt = fields[1]
        elif fields[0] == "element":
            if len(fields) != 3 or not fields[2].isdigit():
                raise InputError(path, f"line {lineno}: bad element line '{line.strip()}'")
            elements.append({"name": fields[1], "count": int(fields[2]), "props": []})
        elif fields[0] == "property":
            if not elements:
                raise InputError(path, f"line {lineno}: property before any element")
            if len(fields) == 5 and fields[1] == "list":
                elements[-1]["props"].append((fields[4], None))  # list: size varies per item
            elif len(fields) == 3 and fields[1] in _PLY_TYPES:
                elements[-1]["props"].append((fields[2], _PLY_TYPES[fields[1]]))
            else:
                raise InputError(path, f"line {lineno}: unsupported property '{line.strip()}'")
        else:
            raise InputError(path, f"line {lineno}: unknown PLY header keyword '{fields[0]}'")
    if fmt is None:
        raise InputError(path, "PLY header has no format line")
    return fmt, elements


def _parse_ply(path: PathLike, data: bytes) -> np.ndarray:
    """Vertex x, y, z of an ASCII or binary PLY; other elements are skipped."""
    match = _END_HEADER.search(data)
    if match is None:
        raise InputError(path, "not a PLY file or header has no end_header")
    header = data[: match.end()].decode("ascii", errors="replace")
    body = data[match.end():]
    fmt, elements = _parse_ply_header(path, header)

    names = [e["name"] for e in elements]
    if "vertex" not in names:
        raise InputError(path, "no vertices (PLY header has no 'element vertex')")
    index = names.index("vertex")
    vertex = elements[index]
    prop_names = [name for name, _ in vertex["props"]]
    for axis in ("x", "y", "z"):
        if axis not in prop_names:
            raise InputError(path, f"PLY vertex element has no '{axis}' property")
    if any(kind is None for _, kind in vertex["props"]):
        raise InputError(path, "unsupported PLY layout: list property in the vertex element")
    if vertex["count"] == 0:
        return np.zeros((0, 3))

    if fmt == "ascii":
        return _ply_ascii_vertices(path, body, elements, index, header.count("\n") + 1)
    return _ply_binary_vertices(path, body, elements, index, _PLY_FORMATS[fmt])


def _ply_ascii_vertices(
    path: PathLike, body: bytes, elements: list[dict], index: int, first_lineno: int
) -> np.ndarray:
    """One item per non-blank line; earlier elements are skipped line by line."""
    lines = [
        (lineno, line)
        for lineno, line in enumerate(body.decode("utf-8", errors="replace").splitlines(), first_lineno)
        if line.strip()
    ]
    start = sum(e["count"] for e in elements[:index])
    vertex = elements[index]
    count, n_props = vertex["count"], len(vertex["props"])
    chunk = lines[start: start + count]
    if len(chunk) < count:
        raise InputError(path, f"truncated PLY: {count} vertices declared, {len(chunk)} found")
    columns = [[name for name, _ in vertex["props"]].index(a) for a in ("x", "y", "z")]
    rows = []
    for lineno, line in chunk:
        fields = line.split()
        if len(fields) != n_props:
            raise InputError(path, f"line {lineno}: vertex has {len(fields)} fields, expected {n_props}")
        try:
            rows.append([float(fields[c]) for c in columns])
        except ValueError:
            bad = next(fields[c] for c in columns if not _is_float(fields[c]))
            raise InputError(path, f"line {lineno}: non-numeric field '{bad}' in vertex") from None
    return np.asarray(rows, dtype=np.float64)


def _ply_binary_vertices(
    path: PathLike, body: bytes, elements: list[dict], index: int, order: str
) -> np.ndarray:
    """Structured-dtype view of the vertex block; earlier elements must be fixed-size."""
    offset = 0
    for element in elements[:index]:
        if any(kind is None for _, kind in element["props"]):
            raise InputError(
                path,
                f"unsupported PLY layout: binary element '{element['name']}' with list "
                "properties comes before the vertices",
            )
        offset += element["count"] * _struct_dtype(element, order).itemsize
    vertex = elements[index]
    dtype = _struct_dtype(vertex, order)
    available = max(len(body) - offset, 0) // dtype.itemsize
    if available < vertex["count"]:
        raise InputError(
            path, f"truncated PLY: {vertex['count']} vertices declared, {available} found"
        )
    items = np.frombuffer(body, dtype=dtype, count=vertex["count"], offset=offset)
    return np.stack([items[a].astype(np.float64) for a in ("x", "y", "z")], axis=1)


def _struct_dtype(element: dict, order: str) -> np.dtype:
    # Field names are made unique by position so duplicate property names cannot clash.
    names = [name if name in ("x", "y", "z") else f"_{i}_{name}" for i, (name, _) in enumerate(element["props"])]
    return np.dtype([(n, order + kind) for n, (_, kind) in zip(names, element["props"])])


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
    """PLY with float x, y, z: ASCII (6 decimals) or binary little-endian float32, atomically."""
    points_Nx3 = _checked(path, np.asarray(points_Nx3, dtype=np.float64))
    fmt = "binary_little_endian" if binary else "ascii"
    header = (
        f"ply\nformat {fmt} 1.0\ncomment holly-jax\nelement vertex {len(points_Nx3)}\n"
        "property float x\nproperty float y\nproperty float z\nend_header\n"
    ).encode("ascii")
    if binary:
        body = points_Nx3.astype("<f4").tobytes()
    else:
        body = "".join(f"{x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in points_Nx3.tolist()).encode("ascii")
    write_atomic(path, header + body)
