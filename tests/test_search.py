"""The global pose search: its grid covers SO(3), it finds the pose an image was drawn at (within the grid's
reach, then within 1 degree after the local levels), chunking changes nothing, memory does not grow with the
grid, bad settings are one-line errors, and seeding the refinement table never starts a row worse."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from configs import tiny
from holly_jax import evaluate, forward, loss, pointfile, refine, render, search, train
from holly_jax.errors import InputError
from holly_jax.setup import check_config, create_setup

OBJS = __import__("pathlib").Path(__file__).resolve().parents[1] / "objs"
SIZE, SIGMA = (32, 32), 1.0


def _angles_deg(a, b):
    return np.degrees(np.arccos(np.clip((np.einsum("bij,bij->b", a, b) - 1) / 2, -1, 1)))


@pytest.fixture(scope="module")
def drawn():
    """The asymmetric shape (no symmetry: one right pose) drawn at random poses and small translations."""
    points = pointfile.read_points(OBJS / "asymmetric.obj").astype(np.float32)
    points = jnp.asarray(points - points.mean(0))
    R = Rotation.random(4, random_state=1).as_matrix().astype(np.float32)
    t = np.random.default_rng(0).uniform(-0.2, 0.2, (4, 2)).astype(np.float32)
    images = render.render_poses(points, jnp.asarray(R), jnp.asarray(t), jnp.full((4,), SIGMA), SIZE)
    return points, R, t, images


def test_the_grid_covers_rotation_space():
    for spacing in (30.0, 15.0):
        G = search.grid(spacing)
        np.testing.assert_allclose(np.einsum("gij,gkj->gik", G, G), np.broadcast_to(np.eye(3), G.shape), atol=1e-5)
        np.testing.assert_allclose(np.linalg.det(G), 1.0, atol=1e-5)
        probes = Rotation.random(400, random_state=3).as_matrix()
        nearest = np.degrees(np.arccos(np.clip(((np.einsum("qij,gij->qg", probes, G)) - 1).max(1) / 2, -1, 1)))
        assert nearest.max() < spacing and np.median(nearest) < 0.6 * spacing
    # a view along d: the grid's rotations take their viewing direction to the optical axis
    d = search.directions(50)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-12)
    assert abs(d.mean(0)).max() < 0.05  # spread over the whole sphere
    G = search.grid(30.0)
    views = search.directions(round(4 * np.pi / np.radians(30.0) ** 2))
    per_view = len(G) // len(views)
    np.testing.assert_allclose(
        np.einsum("vij,vj->vi", G[::per_view], views), np.broadcast_to([0, 0, 1.0], views.shape), atol=1e-5
    )


def test_the_search_finds_the_pose_an_image_was_drawn_at(drawn):
    points, R, t, images = drawn
    coarse = search.search(points, images, SIGMA, SIZE, "basic", search.Search(15.0, 0, 8, 64))
    assert _angles_deg(np.asarray(coarse.R_Bx3x3), R).max() < 15.0  # within the grid's reach
    fine = search.search(points, images, SIGMA, SIZE, "basic", search.Search(15.0, 4, 8, 64))
    assert _angles_deg(np.asarray(fine.R_Bx3x3), R).max() < 1.0
    np.testing.assert_allclose(np.asarray(fine.t_Bx2), t, atol=0.01)  # centroids matched
    assert np.all(np.asarray(fine.loss_B) < np.asarray(coarse.loss_B))
    # the loss reported is the loss of the pose returned, and the kept candidates are sorted
    again = loss.l1_per_image(
        render.render_poses(points, fine.R_Bx3x3, fine.t_Bx2, jnp.full((4,), SIGMA), SIZE), images, "basic"
    )
    np.testing.assert_allclose(np.asarray(again), np.asarray(fine.loss_B), rtol=1e-4)
    assert np.all(np.diff(np.asarray(fine.loss_BxK), axis=1) >= 0)
    # the coarse level's answer too: its approximate scores (a shared drawing, whole-pixel moves) only rank
    t_coarse = jax.vmap(lambda R, x: search.centred(points, R[None], x, SIZE)[0])(coarse.R_Bx3x3, images)
    again = loss.l1_per_image(
        render.render_poses(points, coarse.R_Bx3x3, t_coarse, jnp.full((4,), SIGMA), SIZE), images, "basic"
    )
    np.testing.assert_allclose(np.asarray(again), np.asarray(coarse.loss_B), rtol=1e-4)


def test_the_coarse_level_keeps_the_grid_rotation_that_exact_scoring_ranks_first(drawn):
    points, _, _, images = drawn
    G = search.grid(30.0)
    kept = search.coarse(points, jnp.asarray(G), images, SIGMA, SIZE, "basic", 8, 64)[1]
    for image, kept_K in zip(images, np.asarray(kept)):  # every grid rotation drawn at the image's own centring
        t = search.centred(points, jnp.asarray(G), image, SIZE)
        drawn_G = render.render_poses(points, jnp.asarray(G), t, jnp.full((len(G),), SIGMA), SIZE)
        best = G[int(np.argmin(loss.l1_per_image(drawn_G, image[None], "basic")))]
        assert np.min(_angles_deg(kept_K, np.broadcast_to(best, kept_K.shape))) < 0.1  # the same one


def test_chunks_change_nothing(drawn):
    points, _, _, images = drawn
    G = jnp.asarray(search.grid(30.0))
    run = lambda chunk: search.coarse(points, G, images, SIGMA, SIZE, "basic", 6, chunk)
    one_loss, one_R = run(len(G))  # the whole grid at once
    assert len(G) % 69 == 0 and len(G) % 64  # 69 tiles the grid; 7 and 64 end on a chunk that overlaps
    for chunk in (7, 64, 69):
        loss_, R_ = run(chunk)
        np.testing.assert_array_equal(np.asarray(R_), np.asarray(one_R))
        np.testing.assert_allclose(np.asarray(loss_), np.asarray(one_loss), rtol=1e-6)


def test_memory_does_not_grow_with_the_grid():
    points, targets = jnp.zeros((50, 3)), jnp.ones((4, *SIZE))
    temp = []
    for spacing in (15.0, 5.0):  # 4,392 and 118,800 rotations
        G = jnp.asarray(search.grid(spacing))
        fn = jax.jit(lambda p, G, x: search.coarse(p, G, x, SIGMA, SIZE, "basic", 8, 64))
        temp.append(fn.lower(points, G, targets).compile().memory_analysis().temp_size_in_bytes)
    assert temp[1] < 1.02 * temp[0]  # 27 times the grid, the same working memory


@pytest.mark.parametrize(
    "field,value,problem",
    [
        ("use", "always", "unknown value"),
        ("grid_deg", 0.0, "search.grid_deg"),
        ("grid_deg", -5.0, "search.grid_deg"),
        ("grid_deg", 1.0, "search.grid_deg"),
        ("keep", 0, "search.keep"),
        ("chunk", 0, "search.chunk"),
        ("levels", -1, "search.levels"),
        ("at_break", True, "needs refine.relabel_every > 0"),  # tiny's refinement does not break
        ("again_at", 1.0, "search.again_at"),
        ("again_at", -0.5, "search.again_at"),
        ("again_at", 0.5, "needs refine.steps > 0"),  # tiny does not refine
    ],
)
def test_bad_settings_are_one_line_errors(field, value, problem):
    cfg = tiny.get_config()
    setattr(cfg.search, field, value)
    with pytest.raises(InputError, match=problem) as e:
        check_config(cfg)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("predict_sigma", [False, True])
def test_seeding_the_refinement_table_never_starts_a_row_worse(predict_sigma):
    cfg = tiny.get_config()
    cfg.model.predict_sigma = predict_sigma  # rows keep the network's sigma: the search is scored at it
    cfg.refine.steps, cfg.refine.images, cfg.refine.batch_size = 1, 16, 8
    cfg.search.grid_deg, cfg.search.levels = 30.0, 2
    setup = create_setup(cfg)
    state = train.create_state(setup, train.initial_points(setup))  # an untrained network: poses are poor
    ph = refine.phase(setup)
    plain = refine.initial_state(setup, state, ph)
    cfg.search.use = "refine"
    seeded = refine.initial_state(create_setup(cfg), state, ph)
    items = np.asarray(plain.items_M)
    targets, _ = evaluate.images_of(setup, items, ph.sigma)
    cloud = forward.cloud(setup, state.params["points"])

    def start_loss(rs):
        images = render.render_poses(cloud, rs.R0_Mx3x3, rs.rows["t"], rs.rows["sigma"], setup.ds.size)
        return np.asarray(loss.l1_per_image(images, jnp.asarray(targets), cfg.train.normalise))

    before, after = start_loss(plain), start_loss(seeded)
    assert np.all(after <= before + 1e-4) and np.mean(after < before - 1e-3) > 0.5


def test_held_out_images_posed_by_the_search_against_the_cloud():
    # the true points in an untrained network's state: its poses are poor, the search's against the points good
    cfg = tiny.get_config()
    cfg.search.use, cfg.search.grid_deg, cfg.search.levels = "refine", 15.0, 3
    setup = create_setup(cfg)
    state = train.create_state(setup, np.asarray(setup.ds.arrays.gt_Nx3))
    sigma = forward.final_sigma(setup)
    targets, R_true, _ = evaluate.held_out(setup, sigma)
    pred = forward.Predictor(setup, state)(targets, sigma)
    R, t, loss_B = evaluate.searched_poses(setup, state, targets, pred, batch=5)  # 8 images: a padded chunk
    drawn = render.render_poses(setup.ds.arrays.gt_Nx3, jnp.asarray(R), jnp.asarray(t), pred.sigma_B, SIZE)
    np.testing.assert_allclose(loss.l1_per_image(drawn, targets, "basic"), loss_B, rtol=1e-4)  # as drawn
    assert np.all(loss_B <= pred.loss_B)  # never worse than the network's pose
    assert np.median(_angles_deg(np.asarray(pred.pose.R_Bx3x3), R_true)) > 30
    assert np.median(_angles_deg(R, R_true)) < 3.0
