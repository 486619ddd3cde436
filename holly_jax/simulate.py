"""Simulated training data from a ground-truth point set (docs/method.md §3).

A data set is a table of items: a pose per item (axis-angle rotation drawn
uniformly from SO(3), translation) and the index of its base item. The
fluorophores of a base item (wobbled copies of the ground-truth points, masked
by dropout and spawn rate) are a pure function of a key folded with the base
index, so they are regenerated inside the jitted step rather than stored:
memory grows with the number of items only (20 bytes each), never with
items x pixels. In-plane augmentation turns each base item into ``num_aug``
items that share its fluorophores and differ by a rotation about z.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from holly_jax import render, rotations
from holly_jax.errors import InputError

SPLITS = ("train", "test", "valid")


class SimOptions(NamedTuple):
    """How items are drawn. Hashable, so it can be a static jit argument."""

    translate: bool = True
    max_trans: float = 0.1
    dropout: float = 0.0  # probability a whole ground-truth point is off in an item
    wobble: float = 0.0  # std of each fluorophore's displacement, per coordinate
    spawn: float = 1.0  # probability each fluorophore copy is on
    max_spawn: int = 1  # fluorophore copies per ground-truth point
    num_aug: int = 1  # items per base item (in-plane rotations about z); 1 = no augmentation


class Table(NamedTuple):
    """M items: pose, base item, and the key their fluorophores derive from."""

    rotation_Mx3: jax.Array  # axis-angle
    translation_Mx2: jax.Array
    base_M: jax.Array  # int32 base item index (items of one base share fluorophores)
    fluor_key: jax.Array  # one PRNG key


def make_table(key: jax.Array, num_base: int, opts: SimOptions) -> Table:
    """Draw ``num_base * opts.num_aug`` items from a key."""
    k_rot, k_aug, k_trans, k_fluor = jax.random.split(key, 4)
    n = num_base * opts.num_aug
    q_base = jax.vmap(rotations.random_quaternion)(jax.random.split(k_rot, num_base))
    q_base = jnp.repeat(q_base, opts.num_aug, axis=0)
    if opts.num_aug > 1:
        angles = jax.random.uniform(k_aug, (n,), minval=0.0, maxval=2 * jnp.pi)
        q = jax.vmap(rotations.compose_in_plane)(q_base, angles)
    else:
        q = q_base
    rotation = jax.vmap(rotations.quaternion_to_axis_angle)(q)
    if opts.translate:
        translation = jax.random.uniform(k_trans, (n, 2), minval=-opts.max_trans, maxval=opts.max_trans)
    else:
        translation = jnp.zeros((n, 2), jnp.float32)
    base = jnp.repeat(jnp.arange(num_base, dtype=jnp.int32), opts.num_aug)
    return Table(rotation, translation, base, k_fluor)


make_table_jit = jax.jit(make_table, static_argnums=(1, 2))


def fluorophores(gt_Nx3: jax.Array, key: jax.Array, opts: SimOptions) -> tuple[jax.Array, jax.Array]:
    """One item's fluorophores: P = N * max_spawn points and their 0/1 mask."""
    n = gt_Nx3.shape[0]
    s = opts.max_spawn
    k_wobble, k_drop, k_spawn = jax.random.split(key, 3)
    points_NxSx3 = gt_Nx3[:, None, :] + opts.wobble * jax.random.normal(k_wobble, (n, s, 3))
    keep_point_N = jax.random.uniform(k_drop, (n,)) >= opts.dropout
    keep_copy_NxS = jax.random.uniform(k_spawn, (n, s)) < opts.spawn
    mask_NxS = keep_point_N[:, None] & keep_copy_NxS
    return points_NxSx3.reshape(n * s, 3), mask_NxS.reshape(n * s).astype(jnp.float32)


def item_fluorophores(
    gt_Nx3: jax.Array, table: Table, idx_B: jax.Array, opts: SimOptions
) -> tuple[jax.Array, jax.Array]:
    """Fluorophores of items idx_B -> points B x P x 3 and masks B x P."""
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(table.fluor_key, table.base_M[idx_B])
    return jax.vmap(fluorophores, in_axes=(None, 0, None))(gt_Nx3, keys, opts)


def render_targets(
    gt_Nx3: jax.Array, table: Table, idx_B: jax.Array, sigma_B: jax.Array, opts: SimOptions, size: render.Size
) -> jax.Array:
    """Target images B x H x W of items idx_B at blur sigma_B. Jittable (opts and size static)."""
    points, masks = item_fluorophores(gt_Nx3, table, idx_B, opts)
    R_Bx3x3 = jax.vmap(rotations.axis_angle_to_matrix)(table.rotation_Mx3[idx_B])
    return render.render_items(points, R_Bx3x3, table.translation_Mx2[idx_B], sigma_B, masks, size)


def split(
    key: jax.Array, sizes: dict[str, int], num_aug: int, allocation: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Disjoint item indices per split; ``sizes`` counts base items (the original's train/test/valid sizes).

    Each base item stands for ``num_aug`` items, and whole base items are split, so
    augmented copies never cross sets. Item b * num_aug + j is copy j of base item b.
    """
    for name in SPLITS:
        if sizes.get(name, 0) < 0:
            raise InputError(None, f"data size {name}={sizes[name]} must not be negative")
    if sizes.get("train", 0) <= 0:
        raise InputError(None, "data size train must be positive")
    num_base = sum(sizes.get(name, 0) for name in SPLITS)
    if allocation is None:
        order = np.asarray(jax.random.permutation(key, num_base))
        bounds = np.cumsum([0] + [sizes.get(name, 0) for name in SPLITS])
        bases = {name: order[bounds[i] : bounds[i + 1]] for i, name in enumerate(SPLITS)}
    else:
        bases = allocation
        for name in SPLITS:
            want, got = sizes.get(name, 0), len(bases.get(name, ()))
            if got != want:
                raise InputError(None, f"allocation gives {got} base items for {name}, config asks for {want}")
        _check_allocation(bases, num_base, None)
    return {
        name: (np.asarray(bases[name], np.int64)[:, None] * num_aug + np.arange(num_aug)).reshape(-1).astype(np.int32)
        for name in SPLITS
    }


def read_allocation(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Base-item indices per split from a text file: lines ``train: 0 4 5 ...``, ``test: ...``, ``valid: ...``."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise InputError(path, "allocation file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read allocation file ({e.__class__.__name__})") from None
    out = {name: np.zeros(0, np.int64) for name in SPLITS}
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, rest = line.partition(":")
        name = name.strip()
        if not sep or name not in SPLITS:
            raise InputError(path, f"line {lineno}: expected 'train:', 'test:' or 'valid:' followed by indices")
        try:
            out[name] = np.asarray([int(f) for f in rest.replace(",", " ").split()], np.int64)
        except ValueError:
            raise InputError(path, f"line {lineno}: indices must be integers") from None
    _check_allocation(out, None, path)
    return out


def _check_allocation(bases: dict[str, np.ndarray], num_base: int | None, path) -> None:
    every = np.concatenate([np.asarray(bases.get(name, ()), np.int64) for name in SPLITS])
    if every.size and every.min() < 0:
        raise InputError(path, "allocation has a negative index")
    if num_base is not None and every.size and every.max() >= num_base:
        raise InputError(path, f"allocation index {every.max()} is out of range for {num_base} base items")
    if np.unique(every).size != every.size:
        raise InputError(path, "allocation sets overlap or repeat an index")
