import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import dense_render
from scipy.spatial.transform import Rotation

from holly_jax import simulate
from holly_jax.errors import InputError

GT = np.random.default_rng(0).uniform(-1, 1, (50, 3)).astype(np.float32)


def _items(opts, n=400, seed=0):
    table = simulate.make_table(jax.random.key(seed), n, opts)
    points, masks = simulate.item_fluorophores(jnp.asarray(GT), table, jnp.arange(n * opts.num_aug), opts)
    return table, np.asarray(points), np.asarray(masks)


def test_dropout_fraction():
    _, _, masks = _items(simulate.SimOptions(dropout=0.1))
    n = masks.size  # 20,000 Bernoulli draws: 4 standard errors is 0.0085
    assert abs((1 - masks.mean()) - 0.1) < 4 * np.sqrt(0.1 * 0.9 / n)


def test_spawn_counts_are_binomial():
    opts = simulate.SimOptions(max_spawn=4, spawn=0.3)
    _, points, masks = _items(opts)
    assert points.shape == (400, 50 * 4, 3)
    counts = masks.reshape(400, 50, 4).sum(-1).ravel()  # copies on per ground-truth point
    assert abs(counts.mean() - 1.2) < 4 * np.sqrt(0.84 / counts.size)
    assert abs(counts.var() - 0.84) < 0.05
    assert counts.max() <= 4


def test_dropout_removes_all_copies_of_a_point():
    _, _, masks = _items(simulate.SimOptions(max_spawn=3, dropout=0.5))
    per_point = masks.reshape(400, 50, 3)
    assert np.all((per_point.min(-1) == per_point.max(-1)))  # spawn 1: a point is all on or all off


def test_wobble_standard_deviation():
    opts = simulate.SimOptions(wobble=0.03, max_spawn=2)
    _, points, _ = _items(opts)
    offsets = points.reshape(400, 50, 2, 3) - GT[None, :, None, :]
    assert abs(offsets.mean()) < 4 * 0.03 / np.sqrt(offsets.size)
    assert abs(offsets.std() / 0.03 - 1) < 0.01  # 120,000 samples: std error of std ~0.2%


def test_translation_range_and_switch():
    table, _, _ = _items(simulate.SimOptions(max_trans=0.2))
    t = np.asarray(table.translation_Mx2)
    assert t.min() >= -0.2 and t.max() <= 0.2 and t.std() > 0.1  # U(-0.2, 0.2) has std 0.115
    table, _, _ = _items(simulate.SimOptions(translate=False))
    assert not np.any(np.asarray(table.translation_Mx2))


def test_augmented_items_share_fluorophores_and_differ_by_z_rotation():
    opts = simulate.SimOptions(num_aug=5, wobble=0.05, dropout=0.2)
    table, points, masks = _items(opts, n=20)
    assert points.shape[0] == 100
    np.testing.assert_array_equal(points[0], points[4])
    np.testing.assert_array_equal(masks[0], masks[4])
    assert not np.array_equal(points[0], points[5])
    R = Rotation.from_rotvec(np.asarray(table.rotation_Mx3)).as_matrix()
    rel = R[3] @ R[0].T  # q = q_z * q_base, so R_i R_j^T is a rotation about z
    np.testing.assert_allclose(rel[2], [0, 0, 1], atol=1e-5)
    np.testing.assert_allclose(rel[:, 2], [0, 0, 1], atol=1e-5)


def test_targets_match_dense_render_of_fluorophores():
    opts = simulate.SimOptions(dropout=0.2, wobble=0.02, max_spawn=2, spawn=0.7)
    table, points, masks = _items(opts, n=3)
    idx = jnp.asarray([2, 0])
    sigmas = jnp.asarray([1.5, 3.0])
    images = np.asarray(
        jax.jit(simulate.render_targets, static_argnums=(4, 5))(jnp.asarray(GT), table, idx, sigmas, opts, (24, 32))
    )
    for b, i in enumerate([2, 0]):
        want = dense_render(
            points[i],
            np.asarray(table.rotation_Mx3[i]),
            np.asarray(table.translation_Mx2[i]),
            float(sigmas[b]),
            masks[i],
            (24, 32),
        )
        np.testing.assert_allclose(images[b], want, rtol=1e-4, atol=1e-6 * want.max())


def test_splits_are_disjoint_and_keep_augmented_copies_together():
    sizes = {"train": 12, "test": 4, "valid": 2}  # base items
    sets = simulate.split(jax.random.key(3), sizes, num_aug=5)
    assert {k: len(v) for k, v in sets.items()} == {"train": 60, "test": 20, "valid": 10}
    every = np.concatenate(list(sets.values()))
    assert np.array_equal(np.sort(every), np.arange(90))
    for v in sets.values():
        assert len(np.unique(v // 5)) * 5 == len(v)  # whole base items only
    with pytest.raises(InputError, match="train must be positive"):
        simulate.split(jax.random.key(3), {"train": 0, "test": 20, "valid": 10}, num_aug=5)


def test_allocation_file(tmp_path):
    f = tmp_path / "alloc.txt"
    f.write_text("# base item indices\ntrain: 3 0 4\ntest: 1\nvalid: 2\n")
    alloc = simulate.read_allocation(f)
    sets = simulate.split(jax.random.key(0), {"train": 3, "test": 1, "valid": 1}, 2, alloc)
    np.testing.assert_array_equal(sets["train"], [6, 7, 0, 1, 8, 9])
    np.testing.assert_array_equal(sets["test"], [2, 3])
    for text, problem in [
        ("train: 0 1\ntest: 1\n", "overlap"),
        ("train: 0 x\n", "integers"),
        ("training: 0\n", "expected"),
        ("train: -1\n", "negative"),
    ]:
        f.write_text(text)
        with pytest.raises(InputError, match=problem) as e:
            simulate.read_allocation(f)
        assert "alloc.txt" in str(e.value)
    f.write_text("train: 0 1 9\ntest: 2\nvalid: 3\n")
    with pytest.raises(InputError, match="out of range"):
        simulate.split(jax.random.key(0), {"train": 3, "test": 1, "valid": 1}, 1, simulate.read_allocation(f))


def test_a_million_items_fit_in_memory():
    table = simulate.make_table_jit(jax.random.key(0), 1_000_000, simulate.SimOptions())
    nbytes = sum(np.asarray(x).nbytes for x in (table.rotation_Mx3, table.translation_Mx2, table.base_M))
    assert nbytes <= 32 * 1_000_000  # bytes per item, whatever the number of points
    # their targets render from the table alone, for any item
    img = simulate.render_targets(
        jnp.asarray(GT), table, jnp.asarray([999_999]), jnp.asarray([2.0]), simulate.SimOptions(), (16, 16)
    )
    assert img.shape == (1, 16, 16) and float(img.sum()) > 0
