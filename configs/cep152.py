"""The original's CEP152 run on real FITS images: 250 points, batch 32, 40 epochs, predicted sigma,
basic normalisation, and the CEP152 sigma list (10, 9, 8.1, ... 3.28, each four times).

    python launch.py --config=configs/cep152.py --workdir=runs/cep152 --config.data.path=PATH/TO/images
    python launch.py --config=configs/cep152.py:locs --workdir=runs/cep152 --config.data.path=PATH/TO/locs.hdf5
    python launch.py --config=configs/cep152.py:locs_c9 --workdir=runs/cep152_c9 --config.data.path=...

PATH/TO/images holds one subfolder per sigma of the list (``10.0``, ``9.0``, ``8.1``, ... or ``10``,
``09``, ...), each with the same 128x128 FITS renders, or the FITS images themselves, which are then
blurred on the device at the schedule's sigma. About 40,000 images; use a GPU. With ``:locs`` the
path is a localisation table (Picasso HDF5 with picked groups, or ThunderSTORM CSV with a ``group``
or ``cluster_label`` column): each particle is drawn on the fly, no pre-rendering, at ``data.pixel_nm``
nm per pixel (0: chosen from the particles' size; README "Units").

``fits_c9`` and ``locs_c9`` impose CEP152's 9-fold ring (``model.symmetry=c9``): 28 learned points drawn
9 times (252 in all). Check the choice first: ``python -m holly_jax.symmetry`` on a C1 run's
``final.ply`` (or its ``eval/symmetry.png``) should rank C9 (or D9) high, and the imposed run's held-out
loss (``eval/metrics.json``) should not be worse than the C1 run's (README, "Symmetry").
"""

from configs import default
from holly_jax import schedule

CEP152_STEPS = schedule.BUNNY_SIGMAS[:12]  # 10, 9, 8.1, 7.29, ... 3.65, 3.28
VARIANTS = ("fits", "locs", "fits_c9", "locs_c9")


def get_config(variant: str = "fits"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown CEP152 variant {variant!r}; expected one of {VARIANTS}")
    source = variant.split("_")[0]
    config = default.get_config()
    config.data.source = source
    config.data.path = "images" if source == "fits" else "locs.hdf5"
    config.data.train_size = 0  # every image not held out
    config.data.test_size = 200
    config.data.valid_size = 200
    config.points.num = 250
    config.model.predict_sigma = True
    config.sigma.list = ",".join(str(s) for s in CEP152_STEPS for _ in range(4))
    config.sigma.interpolate = False  # one folder per entry when the images come pre-blurred
    config.train.batch_size = 32
    config.train.epochs = 40
    config.train.normalise = "basic"
    if variant.endswith("_c9"):  # the 9-fold ring imposed: 28 learned points drawn 9 times
        config.model.symmetry = "c9"
        config.points.num = 252
    return config
