"""Per-image pose refinement: sparse per-row Adam, only the batch's rows move, poses converge, runs resume."""

import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation
from test_fits_training import _fits_config, _images

from configs import tiny
from holly_jax import data, evaluate, input_pipeline, loss, pipeline, refine, render, rotations, train, workdirs
from holly_jax.setup import create_setup

REPO = Path(__file__).resolve().parents[1]


def _config(**overrides):
    cfg = tiny.get_config()
    cfg.data.object = str(REPO / "objs" / "asymmetric.obj")
    cfg.refine.steps, cfg.refine.images, cfg.refine.batch_size = 12, 32, 8
    for dotted, value in overrides.items():
        section, field = dotted.split(".")
        cfg[section][field] = value
    return cfg


def _start(cfg):
    setup = create_setup(cfg)
    state = train.create_state(setup, train.initial_points(setup))
    ph = refine.phase(setup)
    return setup, state, ph, refine.initial_state(setup, state, ph)


def test_sparse_adam_matches_optax_adam_row_by_row():
    cfg = _config()
    rng = np.random.default_rng(0)
    m, lr = 5, 0.01
    rows = {"omega": jnp.asarray(rng.normal(size=(m, 3)), jnp.float32)}
    mu = nu = jax.tree.map(jnp.zeros_like, rows)
    count = jnp.zeros((m,), jnp.int32)
    schedule = [[0, 2], [2], [0, 2, 4], [4, 1]]  # rows updated at each step
    grads_per_step = [rng.normal(size=(len(r), 3)).astype(np.float32) for r in schedule]
    for idx, g in zip(schedule, grads_per_step):
        idx = jnp.asarray(idx)
        new, mu_b, nu_b, count_b = refine.sparse_adam(
            jax.tree.map(lambda x: x[idx], rows),
            {"omega": jnp.asarray(g)},
            jax.tree.map(lambda x: x[idx], mu),
            jax.tree.map(lambda x: x[idx], nu),
            count[idx],
            lr,
            cfg,
        )
        rows = jax.tree.map(lambda f, p: f.at[idx].set(p), rows, new)
        mu = jax.tree.map(lambda f, p: f.at[idx].set(p), mu, mu_b)
        nu = jax.tree.map(lambda f, p: f.at[idx].set(p), nu, nu_b)
        count = count.at[idx].set(count_b)
    reference = np.random.default_rng(0).normal(size=(m, 3)).astype(np.float32)
    tx = optax.adam(lr, b1=cfg.optim.b1, b2=cfg.optim.b2, eps=cfg.optim.eps)
    for row in range(m):  # each row on its own: plain Adam over the gradients it received
        p = jnp.asarray(reference[row])
        opt = tx.init(p)
        for idx, g in zip(schedule, grads_per_step):
            if row in idx:
                u, opt = tx.update(jnp.asarray(g[idx.index(row)]), opt, p)
                p = optax.apply_updates(p, u)
        np.testing.assert_allclose(np.asarray(rows["omega"][row]), np.asarray(p), rtol=1e-5, atol=1e-6)
    assert np.asarray(count).tolist() == [2, 1, 3, 0, 2]


def test_a_step_changes_only_the_rows_of_its_batch():
    cfg = _config()
    setup, _, ph, rstate = _start(cfg)
    step = refine.make_step(setup, ph)
    items = np.asarray(rstate.items_M)
    for rows in ([0, 1, 2, 3, 4, 5, 6, 7], [20, 21, 22, 23, 24, 25, 26, 27]):  # moments in two groups of rows
        rstate, _ = step(rstate, setup.ds.arrays, jnp.asarray(rows), jnp.asarray(items[rows]))
    before = jax.device_get(rstate)
    batch = np.asarray([3, 9, 11, 17, 21, 30, 31, 5])
    after, metrics = step(rstate, setup.ds.arrays, jnp.asarray(batch), jnp.asarray(items[batch]))
    after = jax.device_get(after)
    others = np.setdiff1d(np.arange(ph.rows), batch)
    for name in ("rows", "mu", "nu"):
        for field in ("omega", "t"):
            x, y = getattr(before, name)[field], getattr(after, name)[field]
            np.testing.assert_array_equal(x[others], y[others])  # untouched, bit for bit
            assert np.all(np.any(x[batch] != y[batch], axis=-1)), (name, field)
    np.testing.assert_array_equal(before.count_M[others], after.count_M[others])
    np.testing.assert_array_equal(after.count_M[batch], before.count_M[batch] + 1)
    np.testing.assert_array_equal(after.rows["sigma"], before.rows["sigma"])  # the schedule's sigma: not learned
    assert not np.array_equal(after.points, before.points)
    assert np.isfinite(float(metrics["train_loss"]))


def test_trimming_leaves_the_highest_loss_rows_out_of_the_points_update_alone():
    # refine.trim 0.5: the points' gradient is that of the batch's 4 lowest-loss rows (as a step on those
    # rows alone makes it), while every row's pose moves as in an untrimmed step
    setup, _, ph, rstate = _start(_config(**{"refine.trim": 0.5}))
    plain_setup = create_setup(_config())
    plain_ph = refine.phase(plain_setup)
    items = np.asarray(rstate.items_M)
    batch = np.asarray([3, 9, 11, 17, 21, 30, 31, 5])
    sigma, step = jnp.float32(ph.sigma), jnp.int32(setup.total_steps)
    targets = data.targets(setup.ds, setup.ds.arrays, jnp.asarray(items[batch]), sigma, step)
    R = refine.rotations_of(rstate)[batch]
    drawn = render.render_poses(rstate.points, R, rstate.rows["t"][batch], rstate.rows["sigma"][batch], setup.ds.size)
    per_row = np.asarray(loss.l1_per_image(drawn, targets, setup.cfg.train.normalise))
    assert len(np.unique(per_row)) == 8
    kept = batch[np.argsort(per_row)[:4]]
    np.testing.assert_array_equal(np.asarray(refine.trimmed(jnp.asarray(per_row), 0.5)), per_row <= np.sort(per_row)[3])

    def stepped(setup, ph, rows):
        state = jax.tree.map(jnp.array, rstate)  # a fresh copy: the step donates its input
        return jax.device_get(refine.make_step(setup, ph)(state, setup.ds.arrays, jnp.asarray(rows), items[rows])[0])

    cut, on_kept, whole = (
        stepped(setup, ph, batch),
        stepped(plain_setup, plain_ph, kept),
        stepped(plain_setup, plain_ph, batch),
    )
    for x, y in zip(
        jax.tree.leaves((cut.points, cut.points_opt)), jax.tree.leaves((on_kept.points, on_kept.points_opt))
    ):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-7)
    flat = lambda state: np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.points_opt)])  # noqa: E731
    assert not np.allclose(flat(cut), flat(whole), rtol=1e-2)  # the whole batch's gradient differs
    for field in ("omega", "t"):
        np.testing.assert_allclose(cut.rows[field], whole.rows[field], rtol=1e-4, atol=1e-7)
        assert np.all(np.any(cut.rows[field][batch] != rstate.rows[field][batch], axis=-1))


def test_refinement_recovers_perturbed_poses_with_the_true_points():
    cfg = _config(**{"points.fixed": str(REPO / "objs" / "asymmetric.ply"), "refine.lr": 1e-2})
    setup, _, ph, rstate = _start(cfg)
    items = np.asarray(rstate.items_M)
    R_true = evaluate.true_rotations(setup, items)
    axes = np.random.default_rng(1).normal(size=(len(items), 3))
    tilt = axes / np.linalg.norm(axes, axis=1, keepdims=True) * np.deg2rad(8.0)
    R_start = np.asarray(jax.vmap(rotations.axis_angle_to_matrix)(jnp.asarray(tilt, jnp.float32))) @ R_true
    t_true = np.asarray(setup.ds.arrays.table.translation_Mx2)[items]
    rstate = rstate.replace(
        R0_Mx3x3=jnp.asarray(R_start, jnp.float32), rows={**rstate.rows, "t": jnp.asarray(t_true + 0.01, jnp.float32)}
    )

    def err(s):  # the angle of R_true^T R per image, in degrees
        rel = np.einsum("bji,bjk->bik", R_true, np.asarray(refine.rotations_of(s), np.float64))
        return np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))

    assert np.median(err(rstate)) == pytest.approx(8.0, abs=1e-3)
    step = refine.make_step(setup, ph)
    for s in range(300):
        rows = np.arange(8 * (s % 4), 8 * (s % 4) + 8)
        rstate, _ = step(rstate, setup.ds.arrays, jnp.asarray(rows), jnp.asarray(items[rows]))
    assert np.median(err(rstate)) < 1.0
    t_err = np.abs(np.asarray(rstate.rows["t"]) - t_true)
    assert t_err.max() < 5e-3 and np.median(t_err) < 1e-3  # from 0.01 off


def test_refined_run_resumes_exactly_and_reports_refined_poses(tmp_path, capsys):
    # with the symmetry breaking at refinement step 4 (a third of 12), relabelling every 2nd step after it,
    # every row searched again at step 8 (search.again_at), and stray points relocated at steps 5 and 10
    # (in the step: a resumed run relocates where an uninterrupted one does)
    changes = {"train.save_every": 4, "refine.relabel_every": 2, "search.again_at": 0.7, "search.grid_deg": 30.0}
    changes["refine.relocate_every"] = 5
    changes.update({"search.levels": 1, "search.keep": 2})  # a small search: compiled in fewer seconds
    cfg, quiet = _config(**changes), _config(**changes, **{"train.report": False})
    pipeline.train_and_evaluate(quiet, tmp_path / "whole")
    said = capsys.readouterr().out
    moved = re.search(r"refine step 8: every row searched again: (\d+) of 32", said)
    assert moved and int(moved.group(1)) > 0  # the late search changed rows: a resume that skipped it would show
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    shutil.copytree(tmp_path / "whole", tmp_path / "late")
    for step in ("8", "12"):  # as if killed after refinement step 4: its checkpoint holds the state before
        shutil.rmtree(tmp_path / "cut" / "refine" / "checkpoints" / step)  # the breaking, which is redone
    shutil.rmtree(tmp_path / "late" / "refine" / "checkpoints" / "12")  # killed after step 8: the search redone
    for name in ("cut", "late"):
        (tmp_path / name / "final.ply").unlink()
        pipeline.train_and_evaluate(quiet if name == "late" else cfg, tmp_path / name)
        assert (tmp_path / "whole" / "final.ply").read_bytes() == (tmp_path / name / "final.ply").read_bytes()
    setup, state, _ = workdirs.load(tmp_path / "cut")
    a, b = refine.load(tmp_path / "whole", setup, state), refine.load(tmp_path / "cut", setup, state)
    assert int(a.step) == int(b.step) == 12
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    records = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)) and steps[-1] == 32 + 12  # refinement steps follow the 32 training steps
    assert [r["refine_step"] for r in records if r.get("phase") == "refine"] == [4, 8, 12]
    results = json.loads((tmp_path / "cut" / "eval" / "metrics.json").read_text())
    assert (results["step"], results["refine_step"], results["train_images"]) == (32, 12, 32)
    assert 0 <= results["refined_rotation_error_median_deg"] <= 180
    assert results["refined_rotation_error_median_deg"] != results["train_rotation_error_median_deg"]


def test_refinement_on_a_fits_folder(tmp_path):
    _images(tmp_path / "images", 16, 0.0)
    cfg = _fits_config(tmp_path / "images")
    cfg.refine.steps, cfg.refine.batch_size = 6, 4
    state = pipeline.train_and_evaluate(cfg, tmp_path / "run")
    setup, trained, _ = workdirs.load(tmp_path / "run")
    rstate = refine.load(tmp_path / "run", setup, trained)
    assert int(rstate.step) == 6 and rstate.rows["t"].shape == (10, 2)  # every training image has a row
    assert int(np.sum(np.asarray(rstate.count_M))) == 6 * 4
    np.testing.assert_array_equal(np.asarray(state.params["points"]), np.asarray(rstate.points))
    # real data: the refined poses are in poses.csv, named by file, each with its loss, which drawing the
    # refined points at the file's pose against the image gives again
    table = pd.read_csv(tmp_path / "run" / "eval" / "poses.csv")
    rows = table[table["split"] == "refined"]
    names = evaluate.item_names(setup)
    assert list(rows["item"]) == [names[i] for i in np.asarray(rstate.items_M)]
    R = Rotation.from_quat(rows[["qx", "qy", "qz", "qw"]].to_numpy()).as_matrix()
    ph = refine.phase(setup)
    targets, _ = evaluate.images_of(setup, np.asarray(rstate.items_M), ph.sigma)
    drawn = render.render_poses(
        rstate.points,
        jnp.asarray(R, jnp.float32),
        rows[["tx", "ty"]].to_numpy(),
        rows["sigma"].to_numpy(),
        setup.ds.size,
    )
    again = np.asarray(loss.l1_per_image(drawn, jnp.asarray(targets), cfg.train.normalise))
    np.testing.assert_allclose(rows["loss"].to_numpy(), again, rtol=1e-4)
    results = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert results["refined_loss_median"] == pytest.approx(np.median(again), rel=1e-4)
    assert 0 <= results["refined_poor_fit_share"] <= 1 and "refined_rotation_error_median_deg" not in results


def test_rows_on_wrong_poses_fit_poorly_and_are_flagged_without_the_truth():
    # the true points, half the rows at their true poses and half at random rotations: the far rows' loss is
    # over twice the best tenth's, the right rows' under it (refine.poor_fit_share)
    setup = create_setup(_config())
    ph = refine.phase(setup)
    _, R_true, rows_at = _true_rows(setup, ph)
    far = np.arange(ph.rows) % 2 == 1
    R_start = np.where(far[:, None, None], Rotation.random(ph.rows, random_state=5).as_matrix(), R_true)
    loss_M = refine.row_losses(setup, ph, rows_at(R_start, np.eye(3)[None]))
    poor = loss_M > refine.POOR_FIT * np.percentile(loss_M, 10)
    assert np.mean(poor == (_angle_deg(R_start, R_true) > 10)) > 0.9
    assert refine.poor_fit_share(loss_M) == pytest.approx(np.mean(poor))
    assert abs(refine.poor_fit_share(loss_M) - 0.5) < 0.1


def _turn_z(degrees):
    a = np.radians(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]], np.float32)


def _angle_deg(R_a, R_b):
    rel = np.einsum("bji,bjk->bik", np.asarray(R_a, np.float64), np.asarray(R_b, np.float64))
    return np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))


def test_the_propellers_near_symmetries_are_relabelling_turns():
    from holly_jax import pointfile

    turns = refine.relabelling_turns(pointfile.read_points(REPO / "objs" / "propeller_knob.obj"))
    assert turns.shape == (refine.MAX_TURNS, 3, 3)
    for degrees in (120, 240):  # the 3-fold turns about z its knob breaks are among them, within a few degrees
        assert _angle_deg(turns, np.broadcast_to(_turn_z(degrees), turns.shape)).min() < 5
    assert np.allclose(turns[-1], np.eye(3))  # padded with the identity


def _true_rows(setup, ph):
    """The first training items, their true rotations, and rows_at(R, turns): a fresh refinement state of the
    true points with those rows at rotations R, their true translations and the phase's sigma."""
    items = np.asarray(setup.ds.splits["train"][: ph.rows])
    R_true = evaluate.true_rotations(setup, items).astype(np.float32)
    t_true = np.asarray(setup.ds.arrays.table.translation_Mx2)[items]
    rows_at = lambda R, turns: refine._fresh_state(  # noqa: E731
        setup,
        ph,
        jnp.array(np.asarray(setup.ds.arrays.gt_Nx3)),
        jnp.asarray(items),
        jnp.asarray(R, jnp.float32),
        jnp.asarray(t_true, jnp.float32),
        jnp.full((ph.rows,), ph.sigma),
        jnp.asarray(turns, jnp.float32),
    )
    return items, R_true, rows_at


def test_a_relabelling_step_moves_only_its_batch_and_starts_moved_rows_afresh():
    cfg = _config(**{"data.object": str(REPO / "objs" / "propeller_knob.obj"), "refine.relabel_every": 2})
    cfg.points.fixed = str(REPO / "objs" / "propeller_knob.ply")
    setup = create_setup(cfg)
    ph = refine.phase(setup)
    template = refine.initial_state_shape(setup, train.create_state(setup, train.initial_points(setup)), ph)
    assert template.turns_Kx3x3.shape == (refine.MAX_TURNS, 3, 3)
    turns = np.stack([_turn_z(120), _turn_z(240)] + [np.eye(3, dtype=np.float32)] * (refine.MAX_TURNS - 2))
    items, R_true, rows_at = _true_rows(setup, ph)
    rstate = rows_at(R_true, turns)
    step = refine.make_step(setup, ph)
    batch = np.arange(16, 24)
    run = lambda state, rows: step(state, setup.ds.arrays, jnp.asarray(rows), jnp.asarray(items[rows]))
    rstate, _ = run(rstate, np.arange(8))  # step 0 elsewhere
    rstate, _ = run(rstate, batch)  # step 1 (does not): the batch's rows have one Adam update each
    before = jax.device_get(rstate)
    R0 = before.R0_Mx3x3.copy()
    R0[batch[:6]] = R0[batch[:6]] @ _turn_z(120)  # six of the batch's rows put on wrong copies, two left true
    R0[batch[3:6]] = R0[batch[3:6]] @ _turn_z(120)
    after, metrics = run(rstate.replace(R0_Mx3x3=jnp.asarray(R0)), batch)  # step 2: relabels
    after = jax.device_get(after)
    others = np.setdiff1d(np.arange(ph.rows), batch)
    np.testing.assert_array_equal(after.R0_Mx3x3[others], R0[others])
    np.testing.assert_array_equal(after.count_M[others], before.count_M[others])
    moved = _angle_deg(after.R0_Mx3x3[batch], R0[batch]) > 1
    assert not moved[6:].any()  # at the truth: its rotation kept (the translation may be re-centred)
    assert moved[:6].mean() >= 0.66 and float(metrics["relabelled"]) >= moved.mean()
    assert _angle_deg(after.R0_Mx3x3[batch][moved], R_true[batch][moved]).max() < 1  # back at the truth
    assert np.all(after.count_M[batch][moved] == 1)  # moved rows start afresh (one update since)
    # step 3 does not relabel: the same wrong copies planted again stay where they are
    R0_again = after.R0_Mx3x3.copy()
    R0_again[batch] = R0[batch]
    again, metrics = run(jax.device_put(after).replace(R0_Mx3x3=jnp.asarray(R0_again)), batch)
    np.testing.assert_array_equal(np.asarray(again.R0_Mx3x3), R0_again)
    assert float(metrics["relabelled"]) == 0


def test_seeding_moves_the_densest_points_to_a_place_that_stands_out():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(200, 3)) * 0.5
    points[:20] *= 0.2  # a dense core: the most redundant points
    grid = rng.uniform(-3, 3, size=(5000, 3))
    flat = rng.normal(10.0, 1.0, size=len(grid))
    same, moved, score = refine.seed_feature(points, grid, flat, seed=1)
    assert len(moved) == 0 and score < refine.PEAK_SCORE and same is points  # noise: nothing stands out
    peak = np.argmax(np.linalg.norm(grid, axis=1) * (np.abs(grid).max(1) < 2.5))  # far out, inside the cube
    planted = flat.copy()
    planted[peak] = 60.0
    new, moved, score = refine.seed_feature(points, grid, planted, seed=1)
    assert score > refine.PEAK_SCORE and len(moved) == 10  # 5% of 200
    nearest = np.sort(cKDTree(points).query(points, k=2)[0][:, 1])
    assert cKDTree(points).query(points[moved], k=2)[0][:, 1].max() <= nearest[9]  # the densest ten
    assert np.linalg.norm(new[moved] - grid[peak], axis=1).max() < 0.5
    np.testing.assert_array_equal(np.delete(new, moved, 0), np.delete(points, moved, 0))


def test_breaking_finds_the_missing_knob_and_relabels_rows_onto_one_copy():
    # the propeller's body learned without its knob (the knob's 16 points piled into the body), and rows at
    # their true poses turned by a random copy of the 3-fold turn: the average a false symmetry leaves
    cfg = _config(**{"data.object": str(REPO / "objs" / "propeller_knob.obj"), "refine.relabel_every": 2})
    cfg.refine.images, cfg.refine.batch_size = 64, 16
    cfg.data.train_size = 64
    setup = create_setup(cfg)
    ph = refine.phase(setup)
    truth = np.asarray(setup.ds.arrays.gt_Nx3)
    body = truth[:-16]
    points = np.concatenate([body, body[:16] + 0.01])
    items = np.asarray(setup.ds.splits["train"][: ph.rows])
    R_true = evaluate.true_rotations(setup, items).astype(np.float32)
    copies = np.random.default_rng(2).integers(0, 3, ph.rows)
    R_start = np.einsum("bij,bjk->bik", R_true, np.stack([_turn_z(120 * k) for k in copies]))
    t_true = np.asarray(setup.ds.arrays.table.translation_Mx2)[items]
    rstate = refine._fresh_state(
        setup,
        ph,
        jnp.asarray(points, jnp.float32),
        jnp.asarray(items),
        jnp.asarray(R_start),
        jnp.asarray(t_true, jnp.float32),
        jnp.full((ph.rows,), ph.sigma),
        jnp.zeros((refine.MAX_TURNS, 3, 3)),
    )
    broken, said = refine.break_symmetry(setup, ph, rstate)
    assert "points moved to the strongest unexplained place" in said
    new = np.asarray(broken.points)
    moved = np.any(new != points, axis=1)
    assert moved.sum() == round(refine.FEATURE_SHARE * len(points))
    knob = truth[-16:].mean(0)  # the points went to the knob, or to one of its copies
    places = [_turn_z(120 * k) @ knob for k in range(3)]
    assert min(np.linalg.norm(new[moved].mean(0) - p) for p in places) < 0.15
    R = np.asarray(refine.rotations_of(broken))
    relative = np.einsum("bji,bjk->bik", R_true, R)  # R_true^T R: the turn each row is off by
    angle = np.degrees(np.arctan2(relative[:, 1, 0], relative[:, 0, 0])) % 360
    turned = np.round(angle / 120) % 3
    # the rows gather on the copy the moved points chose (those that see the knob: it can hide behind a blade)
    assert np.bincount(copies, minlength=3).max() / ph.rows < 0.45  # they started spread over the copies
    assert np.bincount(turned.astype(int), minlength=3).max() / ph.rows > 0.6


def test_searching_every_row_again_brings_far_rows_home_and_leaves_right_rows_alone():
    # the true points, the asymmetric shape (one right pose): half the rows at their true poses with some Adam
    # history, half at random rotations; a search pass (as at the symmetry-breaking step, search.at_break)
    cfg = _config(**{"refine.relabel_every": 2, "search.at_break": True, "search.grid_deg": 20.0})
    cfg.search.levels = 3
    setup = create_setup(cfg)
    ph = refine.phase(setup)
    _, R_true, rows_at = _true_rows(setup, ph)
    far = np.arange(ph.rows) % 2 == 1
    R_start = np.where(far[:, None, None], Rotation.random(ph.rows, random_state=4).as_matrix(), R_true)
    rstate = rows_at(R_start, np.eye(3)[None])
    rstate = rstate.replace(count_M=jnp.full((ph.rows,), 3), mu={**rstate.mu, "t": rstate.mu["t"] + 0.1})
    assert np.median(_angle_deg(R_start[far], R_true[far])) > 60
    after, moved = refine.each_row(setup, ph, rstate, refine._searched)
    after = jax.device_get(after)
    R = np.asarray(refine.rotations_of(after))
    went = np.any(after.R0_Mx3x3 != R_start.astype(np.float32), axis=(1, 2))
    assert moved == went.sum() and went[far].mean() > 0.9
    assert _angle_deg(R, R_true).max() < 4.0  # all home, to the last level's step (2.5 degrees)
    assert np.all(after.count_M[went] == 0) and np.all(after.mu["t"][went] == 0)  # moved rows start afresh
    np.testing.assert_array_equal(after.count_M[~went], 3)  # the others as they were


def _dense_reads(truth_Nx3, R_Bx3x3, t_Bx2, sigma, size, where_Vx3, drawn_Nx3, R_true_Bx3x3=None):
    """An independent numpy reference of ``refine.point_reads``: each row's target (the truth drawn pixel by
    pixel, Gaussian by Gaussian) and its excess over the drawn cloud, both scaled to sum to 100, read at the
    nearest pixel of each place and summed over the rows whose L1 between the two is at most the median,
    V x 2; and which rows those were. The images are the truth at ``R_true`` (default: the rows' poses R);
    the cloud is drawn, and the places read, at R."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)

    def pixels(x_Nx3, R, t):
        p = 0.5 * x_Nx3 @ R.T
        return (h / 2) * (p[:, 0] + 0.5 * t[0]) + w / 2, -(h / 2) * (p[:, 1] + 0.5 * t[1]) + h / 2

    def draw(x_Nx3, R, t):
        px, py = pixels(x_Nx3, R, t)
        image = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)) for x, y in zip(px, py))
        return image * 100 / image.sum()

    reads, fits = [], []
    R_true_Bx3x3 = R_Bx3x3 if R_true_Bx3x3 is None else R_true_Bx3x3
    rows = zip(np.asarray(R_Bx3x3, np.float64), np.asarray(R_true_Bx3x3, np.float64), np.asarray(t_Bx2, np.float64))
    for R, R_image, t in rows:
        target, drawn = draw(truth_Nx3, R_image, t), draw(drawn_Nx3, R, t)
        left = np.maximum(target - drawn, 0)
        px, py = pixels(where_Vx3, R, t)
        ix, iy = np.floor(px + 0.5).astype(int), np.floor(py + 0.5).astype(int)
        inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        ix, iy = np.clip(ix, 0, w - 1), np.clip(iy, 0, h - 1)
        reads.append(np.stack([np.where(inside, target[iy, ix], 0), np.where(inside, left[iy, ix], 0)], 1))
        fits.append(np.abs(target - drawn).sum())
    used = np.asarray(fits) <= np.median(fits)
    return np.sum(np.asarray(reads)[used], axis=0), used


def _pushed_out(truth):
    """About a tenth of the points pushed 0.8 units outward from the centroid to places over 0.5 units (4
    pixels at 32x32, 2.7 sigma) from the structure: (indices, points)."""
    tried = np.arange(3, len(truth), 10)
    out = truth[tried] - truth.mean(0)
    pushed = truth[tried] + 0.8 * out / np.linalg.norm(out, axis=1, keepdims=True)
    away = cKDTree(truth).query(pushed)[0] > 0.5
    points = truth.copy()
    points[tried[away]] = pushed[away]
    return tried[away], points


def test_stray_points_read_background_and_are_moved_onto_the_structure():
    # the asymmetric shape's true points with some pushed off it, every row at its true pose
    setup = create_setup(_config())
    ph = refine.phase(setup)
    items, R_true, rows_at = _true_rows(setup, ph)
    rstate = rows_at(R_true, np.eye(3)[None])
    truth = np.asarray(rstate.points, np.float64)
    planted, points = _pushed_out(truth)
    assert len(planted) >= 20
    t_true = np.asarray(rstate.rows["t"])
    batch = jnp.asarray(input_pipeline.host_batch(setup, items, setup.total_steps))
    targets = data.targets(setup.ds, setup.ds.arrays, batch, jnp.float32(ph.sigma), jnp.int32(setup.total_steps))
    read = np.asarray(
        refine.point_reads(
            setup,
            jnp.asarray(points, jnp.float32),
            jnp.asarray(R_true),
            rstate.rows["t"],
            rstate.rows["sigma"],
            targets,
        )
    )
    reference, _ = _dense_reads(truth, R_true, t_true, ph.sigma, setup.ds.size, points, points)
    np.testing.assert_allclose(read, reference, rtol=2e-3, atol=2e-3 * reference.max())
    # a quarter of the rows on a wrong pose (turned 180 degrees about x) fit worst: the reading leaves them out
    wrong = np.arange(0, len(R_true), 4)
    R_mixed = np.asarray(R_true).copy()
    R_mixed[wrong] = np.diag([1.0, -1.0, -1.0]) @ R_mixed[wrong]
    mixed = refine.point_reads(
        setup, jnp.asarray(points, jnp.float32), jnp.asarray(R_mixed), rstate.rows["t"], rstate.rows["sigma"], targets
    )
    reference, used = _dense_reads(truth, R_mixed, t_true, ph.sigma, setup.ds.size, points, points, R_true)
    assert used.sum() == len(R_true) // 2 and not used[wrong].any()
    np.testing.assert_allclose(np.asarray(mixed), reference, rtol=2e-3, atol=2e-3 * reference.max())

    key = jax.random.key(0)
    new, moved = refine.relocate_strays(jnp.asarray(points), jnp.asarray(read[:, 0]), jnp.asarray(read[:, 1]), key)
    new, moved = np.asarray(new), np.asarray(moved)
    np.testing.assert_array_equal(np.flatnonzero(moved), planted)  # those, and no other, read background
    np.testing.assert_array_equal(np.delete(new, planted, 0), np.delete(points, planted, 0))
    spacing = np.median(cKDTree(truth).query(truth, k=2)[0][:, 1])
    assert cKDTree(truth).query(new[planted])[0].max() < 2 * spacing  # onto the structure
    # each went beside one of the others, those drawing least of their images first
    kept = np.setdiff1d(np.arange(len(points)), planted)
    to = kept[np.argsort(-read[kept, 1], kind="stable")[: len(planted)]]
    assert np.linalg.norm(new[planted] - points[to], axis=1).max() < 2 * spacing
    same, moved = refine.relocate_strays(jnp.asarray(truth), jnp.ones(len(truth)), jnp.ones(len(truth)), key)
    assert not np.asarray(moved).any() and np.array_equal(np.asarray(same), truth)  # none strays: none moves


def test_a_refinement_step_relocates_stray_points_every_kth_step():
    setup = create_setup(_config(**{"refine.relocate_every": 3, "refine.plr": 1e-4}))
    ph = refine.phase(setup)
    items, R_true, rows_at = _true_rows(setup, ph)
    truth = np.asarray(rows_at(R_true, np.eye(3)[None]).points, np.float64)
    planted, points = _pushed_out(truth)
    fresh = lambda: rows_at(R_true, np.eye(3)[None]).replace(points=jnp.asarray(points, jnp.float32))  # noqa: E731
    opt = jax.tree.map(lambda x: np.asarray(x) + (1.0 if x.shape == points.shape else 0), fresh().points_opt)
    step = refine.make_step(setup, ph)  # donates its state: each run starts from a fresh one

    def run(at, history=opt):
        state = fresh().replace(step=jnp.int32(at), points_opt=jax.tree.map(jnp.asarray, history))
        return step(state, setup.ds.arrays, jnp.arange(16), jnp.asarray(items[:16]))

    for at in (2, 4):  # not due: nothing relocated, every point moves by one small step
        after, metrics = run(at)
        assert float(metrics["relocated"]) == 0
        assert np.abs(np.asarray(after.points) - points).max() < 1e-3
    after, metrics = run(3)  # due
    assert float(metrics["relocated"]) == len(planted)
    new = np.asarray(after.points, np.float64)
    spacing = np.median(cKDTree(truth).query(truth, k=2)[0][:, 1])
    assert cKDTree(truth).query(new[planted])[0].max() < 2 * spacing
    assert np.abs(np.delete(new, planted, 0) - np.delete(points, planted, 0)).max() < 1e-3
    # Adam's moments: the moved points' restarted from zero (as without any history), the others' kept
    plain, _ = run(3, jax.tree.map(lambda x: np.zeros_like(x) if x.shape == points.shape else x, opt))
    for now, without in zip(jax.tree.leaves(after.points_opt), jax.tree.leaves(plain.points_opt)):
        if np.shape(now) == points.shape:
            now, without = np.asarray(now), np.asarray(without)
            np.testing.assert_array_equal(now[planted], without[planted])
            assert np.abs(np.delete(now - without, planted, 0)).min() > 0.8  # b1 or b2 times the history


def test_a_refinement_that_breaks_a_symmetry_relocates_only_after_the_breaking():
    # breaking at step 4 (a third of 12): step 3 is a multiple of 3 but before it, step 6 after it
    setup = create_setup(_config(**{"refine.relocate_every": 3, "refine.relabel_every": 2}))
    ph = refine.phase(setup)
    assert ph.relabel_after == 4
    items, R_true, rows_at = _true_rows(setup, ph)
    planted, points = _pushed_out(np.asarray(rows_at(R_true, np.eye(3)[None]).points, np.float64))
    step = refine.make_step(setup, ph)
    for at, relocated in ((3, 0), (6, len(planted))):
        state = rows_at(R_true, np.eye(3)[None]).replace(points=jnp.asarray(points, jnp.float32), step=jnp.int32(at))
        _, metrics = step(state, setup.ds.arrays, jnp.arange(16), jnp.asarray(items[:16]))
        assert float(metrics["relocated"]) == relocated
