"""The original's bunny runs: 2,000 base images x 20 in-plane augmentations, 350 points,
batch 32, 40 epochs, predicted sigma, basic normalisation, the bunny sigma list.

    python launch.py --config=configs/bunny.py --workdir=runs/bunny \
        --config.data.object=PATH/TO/bunny_large.obj
    python launch.py --config=configs/bunny.py:dropout --workdir=runs/bunny_dropout ...
    python launch.py --config=configs/bunny.py:scatter --workdir=runs/bunny_scatter ...
    python launch.py --config=configs/bunny.py:noise --workdir=runs/bunny_noise ...

Variants (the original's robustness study): ``dropout`` (each point off with
probability 0.1), ``scatter`` (wobble 0.03), ``noise`` (wobble 0.06, up to 4
fluorophores per point, each on with probability 0.3). The bunny OBJ is the
original HOLLy's objs/bunny_large.obj (not shipped here).
"""

from configs import default
from holly_jax import schedule

VARIANTS = {
    "baseline": {},
    "dropout": {"dropout": 0.1},
    "scatter": {"wobble": 0.03},
    "noise": {"wobble": 0.06, "max_spawn": 4, "spawn": 0.3},
}


def get_config(variant: str = "baseline"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown bunny variant {variant!r}; expected one of {tuple(VARIANTS)}")
    config = default.get_config()
    config.data.object = "bunny_large.obj"
    config.data.train_size = 2000
    config.data.num_aug = 20
    for field, value in VARIANTS[variant].items():
        config.data[field] = value
    config.points.num = 350
    config.model.predict_sigma = True
    config.sigma.list = ",".join(str(s) for s in schedule.BUNNY_SIGMAS)
    config.train.batch_size = 32
    config.train.epochs = 40
    config.train.normalise = "basic"
    return config
