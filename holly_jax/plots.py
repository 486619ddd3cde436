"""Pictures of a run: training curves, image pairs and montages, point-cloud views, animations.

Everything is drawn in-process (matplotlib figures rendered by Agg, without
pyplot, so the caller's own matplotlib backend is left alone, and Pillow) and
written atomically, so a picture on disk is always a whole one.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image

from holly_jax.atomic import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PathLike = str | os.PathLike


def to_uint8(image_HxW: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """Grey levels 0..255 scaled to the image's own maximum (or ``vmax``)."""
    image = np.nan_to_num(np.asarray(image_HxW, np.float64))
    top = float(image.max()) if vmax is None else float(vmax)
    if top <= 0:
        return np.zeros(image.shape, np.uint8)
    return (np.clip(image / top, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def montage(images_BxHxW: np.ndarray, cols: int, gap: int = 2) -> np.ndarray:
    """Images tiled row by row (float images each scaled to its own maximum) with a gap, as uint8."""
    images = list(images_BxHxW)
    h, w = np.asarray(images[0]).shape
    rows = -(-len(images) // cols)
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), 40, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        image = np.asarray(image)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = (
            image if image.dtype == np.uint8 else to_uint8(image)
        )
    return out


def side_by_side(a_BxHxW: np.ndarray, b_BxHxW: np.ndarray) -> list[np.ndarray]:
    """uint8 frames with a and b next to each other, each image scaled to its own maximum."""
    return [
        np.concatenate([to_uint8(x), np.full((x.shape[0], 2), 90, np.uint8), to_uint8(y)], 1)
        for x, y in zip(np.asarray(a_BxHxW), np.asarray(b_BxHxW))
    ]


def pairs(inputs_BxHxW: np.ndarray, outputs_BxHxW: np.ndarray, cols: int = 4) -> np.ndarray:
    """Input beside output for each item, tiled: a uint8 image."""
    tiles = side_by_side(inputs_BxHxW, outputs_BxHxW)
    return montage(tiles, cols=min(cols, len(tiles)), gap=4)


def enlargement(size: tuple[int, int]) -> int:
    """How many times to enlarge images of this size so that they show at about 128 pixels."""
    return max(1, 128 // max(size))


def save_png(path: PathLike, image: np.ndarray, scale: int = 1) -> None:
    """A grey image (uint8, or float scaled to its maximum) as PNG, enlarged ``scale`` times."""
    image = np.asarray(image)
    pixels = image if image.dtype == np.uint8 else to_uint8(image)
    picture = Image.fromarray(pixels)
    if scale > 1:
        picture = picture.resize((pixels.shape[1] * scale, pixels.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    write_atomic(path, buf.getvalue())


def save_gif(path: PathLike, frames: Sequence[np.ndarray], seconds_per_frame: float = 0.08, scale: int = 1) -> None:
    """uint8 grey frames as a looping animated GIF."""
    pictures = [Image.fromarray(np.asarray(f, np.uint8)) for f in frames]
    if scale > 1:
        pictures = [p.resize((p.width * scale, p.height * scale), Image.NEAREST) for p in pictures]
    buf = io.BytesIO()
    pictures[0].save(
        buf, format="GIF", save_all=True, append_images=pictures[1:], loop=0, duration=int(seconds_per_frame * 1000)
    )
    write_atomic(path, buf.getvalue())


def _figure(rows: int, cols: int, figsize: tuple[float, float]) -> tuple[Figure, Any]:
    # imported when a figure is drawn: a launch that draws nothing (bad input, infer) starts sooner
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols)


def _save_figure(fig: Figure, path: PathLike) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    write_atomic(path, buf.getvalue())


def save_curves(path: PathLike, records: Sequence[dict[str, Any]]) -> None:
    """Training curves from metrics records: losses, sigma in and predicted, learning rates."""
    fig, axes = _figure(1, 3, figsize=(15, 4))
    panels = (
        (axes[0], ("train_loss", "test_loss"), "L1 per image"),
        (axes[1], ("sigma_in", "sigma_out"), "sigma (px)"),
        (axes[2], ("lr", "plr"), "learning rate"),
    )
    for ax, keys, label in panels:
        for key in keys:
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), label=key, marker="." if len(points) < 30 else None)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    axes[2].set_yscale("log")
    _save_figure(fig, path)


def save_cloud_views(
    path: PathLike, points_Nx3: np.ndarray, truth_Mx3: np.ndarray | None = None, title: str = ""
) -> None:
    """The cloud from three orthogonal views (along z, y and x), with a ground truth beneath if given."""
    points = np.asarray(points_Nx3)
    fig, axes = _figure(1, 3, figsize=(13, 4.5))
    everything = points if truth_Mx3 is None else np.concatenate([points, truth_Mx3])
    lim = float(np.abs(everything).max()) * 1.05 + 1e-6
    for ax, (u, v), name in zip(axes, ((0, 1), (0, 2), (1, 2)), ("x-y (along z)", "x-z (along y)", "y-z (along x)")):
        if truth_Mx3 is not None:
            ax.scatter(truth_Mx3[:, u], truth_Mx3[:, v], s=6, c="0.7", label="ground truth")
        ax.scatter(points[:, u], points[:, v], s=6, c=points[:, 3 - u - v], cmap="viridis", label="learned")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(name)
    if truth_Mx3 is not None:
        axes[0].legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title)
    _save_figure(fig, path)


def save_fsc(
    path: PathLike,
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    thresholds: Sequence[float],
    unit: str,
    title: str = "",
) -> None:
    """FSC curves (label: (frequency, fsc)) against spatial frequency, with threshold lines."""
    fig, ax = _figure(1, 1, figsize=(7, 4.5))
    for label, (freq, fsc) in curves.items():
        ax.plot(freq, fsc, label=label, marker="." if len(freq) < 40 else None)
    for t in thresholds:
        ax.axhline(t, color="0.5", lw=0.8, ls="--")
        ax.text(0, t, f" {t:.3g}", va="bottom", color="0.4", fontsize=8)
    ax.set_xlabel(f"spatial frequency (1/{unit})")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.2, 1.05)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    _save_figure(fig, path)


def save_symmetry_scores(path: PathLike, ranking: Any, title: str = "") -> None:
    """Every candidate point group's score (``symmetry.Ranking``): the worst element's RMS distance in point
    spacings, lower is better; groups that hold in green, the one to impose in orange."""
    shown = [c for c in ranking.candidates if c.order > 1]
    order = {name: i for i, name in enumerate(sorted({c.name for c in shown}, key=_group_key))}
    shown.sort(key=lambda c: order[c.name])
    best = ranking.candidates[0].name
    colours = ["tab:orange" if c.name == best else ("tab:green" if c.holds else "0.6") for c in shown]
    fig, ax = _figure(1, 1, figsize=(12, 3.8))
    ax.bar(range(len(shown)), [c.ratio for c in shown], color=colours)
    ax.set_xticks(range(len(shown)), [c.name for c in shown], rotation=90, fontsize=8)
    ax.axhline(ranking.limit, color="tab:green", lw=0.8, ls="--", label=f"holds below {ranking.limit:.2f}")
    ax.axhline(ranking.chance, color="0.4", lw=0.8, ls=":", label=f"no symmetry: {ranking.chance:.2f}")
    ax.set_ylabel("RMS distance / point spacing")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(f"{title + ': ' if title else ''}would impose {best}")
    _save_figure(fig, path)


def _group_key(name: str) -> tuple[int, int]:
    """C2..C16, then D2..D16, then T, O, I."""
    kind = "CDTOI".index(name[0])
    return (kind, int(name[1:]) if len(name) > 1 else 0)
