"""The original HOLLy's defaults (its train.py options), as one ConfigDict.

    python launch.py --config=configs/default.py --workdir=runs/default \
        --config.data.object=objs/asymmetric.obj

Every other config imports this one and changes a few fields. Fields, grouped:

data     where images come from: ``source`` "simulated" or "fits".
         ``object``: the OBJ/PLY the simulated images are drawn from (the
         original's --objpath). ``path``: for "fits", a folder of FITS images
         (blurred on the device at the schedule's sigma) or of one subfolder
         per sigma of the schedule (``10.0``, ``10`` or ``08``), the
         original's --fitspath; test and valid images are drawn from it and
         train_size (0: all the rest) caps the training images. For
         "locs", ``path`` is a ThunderSTORM CSV or Picasso HDF5 file: each
         particle (group, or locan's cluster_label) is drawn on the fly,
         centred and turned by a random in-plane angle; ``one_particle``: a
         file with no group column is one particle; ``file_type``: a format
         locan reads (rapidstorm, elyra, smap, decode, smlm, nanoimager;
         needs ``pip install locan``), else by suffix. ``pixel_nm``: nm per
         image pixel, which sets the run's scale (nm per object unit =
         pixel_nm * H / 4) and the outputs in nm; 0: unitless for simulated
         and FITS data, chosen from the particles' size for "locs". Sizes count base items;
         with ``num_aug`` > 1 each base item gives num_aug in-plane rotated
         images (the original's --aug --num-aug). ``allocation``: optional file
         of base-item indices per split (lines ``train: 0 5 ...``).
model    the pose network: ``predict_sigma`` (else the schedule's sigma is
         used), ``rotation`` head ("axis_angle" or "6d"), ``dtype``;
         ``symmetry``: a point group imposed on the cloud ("c1": none, "cN",
         "dN", "t", "o", "i"; the learned points are one asymmetric unit,
         drawn under every rotation of the group; points.num counts them all);
         ``num_heads`` K > 1 predicts K pose hypotheses per image and trains
         only the best (winner takes all); 1 is the original;
         ``symmetrised_loss`` also scores every hypothesis at its in-plane
         half turn and keeps the lower loss (cryoAI), against poses that land
         180 degrees off about the optical axis.
points   the learned cloud: ``num`` points, ``init`` ("uniform", "spot",
         "poisson"); ``fixed``: a point file held fixed, which trains the
         network alone (the original's pose-only mode).
sigma    the blur schedule: ``list`` (like "10,8,6.4") or ``file``
         (a sigma CSV, which wins when set); ``interpolate`` linear (the
         original's --cont) or stepped.
optim    AdamW: ``lr`` for the network, ``plr`` for the points (unset: lr);
         ``decay_fraction``: both fall linearly to 0 over this last part of
         the run (0: constant, the original);
         ``adapt``: every ``pinterval`` steps the RMS movement of the points
         feeds a reduce-on-plateau scale (``adapt_factor``, ``adapt_patience``)
         of both learning rates.
train    ``batch_size``, ``epochs`` (or ``steps`` > 0 to override), the
         normalisation ("basic": each image sums to 100, or "none"), and the
         intervals (in steps) for logging + test loss, and for checkpoints +
         point files + pictures; ``report``: evaluate at the end and write
         report.html.
refine   per-image pose refinement after training (auto-decoding):
         ``steps`` > 0 starts a table of poses for the first ``images``
         training images (0: all) from the network's best hypothesis, and
         optimises it with the points for ``steps`` steps of ``batch_size``
         images (0: the training batch) at the schedule's final sigma;
         ``lr`` for the poses (rotation vectors and translations), ``plr``
         for the points (unset: optim.plr, else optim.lr). ``relabel_every``
         > 0: every that many steps, each row of the batch is also scored at
         its pose turned by each rotation that maps the learned cloud (as
         refinement starts) nearly onto itself, and moves to the best
         (0: never, the default). ``trim`` in [0, 1): that share of each
         batch's rows, those with the highest loss, is left out of the
         points' update (their poses still refine): rows on a wrong pose
         then do not draw their copy into the cloud (0: none, the default).
         ``relocate_every`` > 0: every that many steps (after the symmetry
         breaking, with ``relabel_every``), learned points whose
         images read under 0.45 times the median point's intensity at them
         (off the structure, beyond the final blur's reach) move beside the
         points that draw least of what their images hold (0: never, the
         default).
search   a global pose search (projection matching, holly_jax/search.py):
         ``use`` "refine" starts each refinement row from the better (lower
         loss) of the network's best hypothesis and the search's pose;
         "none" (the original) skips it. The search scores a grid over
         SO(3) at ``grid_deg`` degrees, keeps the best ``keep`` rotations per
         image and refines them for ``levels`` local levels (the step
         halving each time); ``chunk`` rotations are drawn at once per image
         (memory: batch x chunk images). ``at_break`` True searches every
         row again at the refinement's symmetry-breaking step (it needs
         ``refine.relabel_every`` > 0), against the cloud refined so far;
         a row moves to the search's pose where that fits its image better.
         ``again_at`` in (0, 1) searches every row once more at that
         fraction of the refinement's steps, against the cloud refined by
         then (0: never, the default).
halves   gold-standard half-set runs (``launch.py --mode=halves``):
         ``half`` 1 or 2 trains on that half of the training items only (a
         seeded split; 0: all); ``voxel``: the FSC volumes' voxel size (nm
         where the run has a scale, else object units; 0: a third of the
         final render width).
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 1

    # Data
    config.data = ml_collections.ConfigDict()
    config.data.source = "simulated"
    config.data.object = "objs/asymmetric.obj"
    config.data.path = ""
    config.data.pixel_nm = 0.0
    config.data.one_particle = False
    config.data.file_type = ""
    config.data.image_height = 128
    config.data.image_width = 128
    config.data.train_size = 50000
    config.data.test_size = 200
    config.data.valid_size = 200
    config.data.translate = True
    config.data.max_trans = 0.1
    config.data.dropout = 0.0
    config.data.wobble = 0.0
    config.data.spawn = 1.0
    config.data.max_spawn = 1
    config.data.num_aug = 1
    config.data.allocation = ""

    # Network
    config.model = ml_collections.ConfigDict()
    config.model.symmetry = "c1"
    config.model.predict_sigma = False
    config.model.rotation = "axis_angle"
    config.model.dtype = "float32"
    config.model.num_heads = 1
    config.model.symmetrised_loss = False

    # Learned points
    config.points = ml_collections.ConfigDict()
    config.points.num = 200
    config.points.init = "uniform"
    config.points.fixed = ""

    # Sigma schedule
    config.sigma = ml_collections.ConfigDict()
    config.sigma.list = "10,1.25"
    config.sigma.file = ""
    config.sigma.interpolate = False

    # Optimiser
    config.optim = ml_collections.ConfigDict()
    config.optim.lr = 4e-4
    config.optim.plr = config_dict.placeholder(float)
    config.optim.weight_decay = 0.01
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8
    config.optim.decay_fraction = 0.0
    config.optim.adapt = False
    config.optim.pinterval = 100
    config.optim.adapt_factor = 0.75
    config.optim.adapt_patience = 10

    # Training loop
    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 20
    config.train.epochs = 10
    config.train.steps = 0
    config.train.normalise = "none"
    config.train.log_every = 100
    config.train.save_every = 1000
    config.train.max_to_keep = 3
    config.train.report = True

    # Per-image pose refinement after training (0 steps: none, the original)
    config.refine = ml_collections.ConfigDict()
    config.refine.steps = 0
    config.refine.images = 0
    config.refine.batch_size = 0
    config.refine.lr = 3e-3
    config.refine.plr = config_dict.placeholder(float)
    config.refine.relabel_every = 0
    config.refine.trim = 0.0
    config.refine.relocate_every = 0

    # Global pose search ("none": the original)
    config.search = ml_collections.ConfigDict()
    config.search.use = "none"
    config.search.grid_deg = 15.0
    config.search.levels = 4
    config.search.keep = 8
    config.search.chunk = 16
    config.search.at_break = False
    config.search.again_at = 0.0

    # Half-set FSC
    config.halves = ml_collections.ConfigDict()
    config.halves.half = 0
    config.halves.voxel = 0.0
    return config
