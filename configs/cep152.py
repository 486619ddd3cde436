"""The original's CEP152 run on real FITS images: 250 points, batch 32, 40 epochs, predicted sigma,
basic normalisation, and the CEP152 sigma list (10, 9, 8.1, ... 3.28, each four times).

    python launch.py --config=configs/cep152.py --workdir=runs/cep152 --config.data.path=PATH/TO/images
    python launch.py --config=configs/cep152.py:locs --workdir=runs/cep152 --config.data.path=PATH/TO/locs.hdf5

PATH/TO/images holds one subfolder per sigma of the list (``10.0``, ``9.0``, ``8.1``, ... or ``10``,
``09``, ...), each with the same 128x128 FITS renders, or the FITS images themselves, which are then
blurred on the device at the schedule's sigma. About 40,000 images; use a GPU. With ``:locs`` the
path is a localisation table (Picasso HDF5 with picked groups, or ThunderSTORM CSV with a ``group``
or ``cluster_label`` column): each particle is drawn on the fly, no pre-rendering, at ``data.pixel_nm``
nm per pixel (0: chosen from the particles' size; README "Units").
"""

from configs import default
from holly_jax import schedule

CEP152_STEPS = schedule.BUNNY_SIGMAS[:12]  # 10, 9, 8.1, 7.29, ... 3.65, 3.28
VARIANTS = ("fits", "locs")


def get_config(source: str = "fits"):
    if source not in VARIANTS:
        raise ValueError(f"unknown CEP152 source {source!r}; expected one of {VARIANTS}")
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
    return config
