"""Inference with a trained run: the pose and sigma of new images, and the learned cloud drawn at them.

Also the original's render tool: a point file at a pose and sigma, as FITS and PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from scipy.spatial.transform import Rotation

from holly_jax import fits, forward, loss, outputs, plots, pointfile, poses, render, workdirs
from holly_jax.errors import InputError


def fits_files(path: str | Path) -> list[Path]:
    """One FITS file, or the FITS files of a folder in name order."""
    path = Path(path)
    if path.is_dir():
        files = fits.files_in(path)
        if not files:
            raise InputError(path, "folder has no FITS images (.fits, .fit, .fts)")
        return files
    if not path.exists():
        raise InputError(path, "file not found")
    return [path]


def infer(
    workdir: str | Path, input_path: str | Path, out: str | Path | None = None, quiet: bool = False
) -> list[dict[str, Any]]:
    """Predict each image's pose and sigma; write the guess as FITS and input|guess as PNG, plus infer.json."""
    saved = workdirs.load(workdir, refined=False)  # the network draws with the trained points
    setup, state = saved.setup, saved.state
    out = Path(out) if out else Path(workdir) / "infer"
    files = fits_files(input_path)
    images = []
    for f in files:
        image = fits.read_image(f)
        if image.shape != setup.ds.size:
            raise InputError(
                f,
                f"image is {image.shape[0]}x{image.shape[1]}, the run was trained on "
                f"{setup.ds.size[0]}x{setup.ds.size[1]}",
            )
        if image.sum() <= 0:
            raise InputError(f, "image has no positive intensity")
        images.append(image)
    sigma = forward.final_sigma(setup)
    pred = forward.Predictor(setup, state)(np.stack(images), sigma)
    results = []
    for i, f in enumerate(files):
        R = np.asarray(pred.pose.R_Bx3x3[i], np.float64)
        rot = Rotation.from_matrix(R)
        x, y, z, w = rot.as_quat()
        results.append(
            {
                "file": str(f),
                "axis_angle": rot.as_rotvec().tolist(),
                "euler_xyz_deg": rot.as_euler("xyz", degrees=True).tolist(),
                "quaternion_wxyz": [w, x, y, z],
                "translation": np.asarray(pred.pose.t_Bx2[i]).tolist(),
                "sigma": float(pred.sigma_B[i]),
                "loss": float(pred.loss_B[i]),
            }
        )
        fits.write_image(out / f"{f.stem}_guess.fits", pred.images_BxHxW[i], {"SIGMA": float(pred.sigma_B[i])})
        pair = plots.side_by_side(images[i][None], pred.images_BxHxW[i][None])[0]
        plots.save_png(out / f"{f.stem}.png", pair, scale=plots.enlargement(setup.ds.size))
    outputs.write_json(out / "infer.json", results)
    if not quiet:
        for r in results:
            e = r["euler_xyz_deg"]
            print(
                f"{Path(r['file']).name}: euler xyz ({e[0]:.1f}, {e[1]:.1f}, {e[2]:.1f}) deg, "
                f"translation ({r['translation'][0]:.3f}, {r['translation'][1]:.3f}), sigma {r['sigma']:.3g}, "
                f"loss {r['loss']:.4g}"
            )
    return results


def parse_size(text: str) -> tuple[int, int]:
    """``128`` or ``128x96`` (height x width)."""
    try:
        parts = [int(p) for p in str(text).lower().split("x")]
    except ValueError:
        raise InputError(None, f"size {text!r}: expected N or HxW") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise InputError(None, f"size {text!r}: expected N or HxW with positive numbers")
    return parts[0], parts[1]


def render_file(
    object_path: str | Path,
    out: str | Path,
    pose: str = "euler:0,0,0",
    sigma: float = 2.0,
    size: str = "128",
    translation: tuple[float, float] = (0.0, 0.0),
    normalise: bool = False,
) -> Path:
    """Render a point file at a pose and sigma to ``out`` (.fits) and a PNG beside it; returns the FITS path."""
    if not sigma > 0:
        raise InputError(None, f"sigma must be positive, got {sigma}")
    points = pointfile.read_points(object_path)
    R = poses.parse_pose(pose)
    image = render.render(
        jnp.asarray(points),
        jnp.asarray(R, jnp.float32),
        jnp.asarray(translation, jnp.float32),
        jnp.float32(sigma),
        None,
        parse_size(size),
    )
    if normalise:
        image = loss.normalise(image[None], "basic")[0]
    image = np.asarray(image)
    out = Path(out)
    fits_path = out if out.suffix.lower() in (".fits", ".fit") else out.with_suffix(".fits")
    fits.write_image(fits_path, image, {"SIGMA": float(sigma), "NORMALIS": "BASIC" if normalise else "NONE"})
    plots.save_png(fits_path.with_suffix(".png"), image)
    return fits_path
