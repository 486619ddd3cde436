"""A tiny CPU config for tests: 32x32 images, a few dozen steps, seconds to run.

python launch.py --config=configs/tiny.py --workdir=runs/tiny
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.object = "objs/asymmetric.obj"
    config.data.image_height = 32
    config.data.image_width = 32
    config.data.train_size = 64
    config.data.test_size = 16
    config.data.valid_size = 8
    config.points.num = 60
    config.sigma.list = "3,1.5"
    config.sigma.interpolate = True
    config.optim.plr = 4e-3
    config.train.batch_size = 8
    config.train.epochs = 4
    config.train.normalise = "basic"
    config.train.log_every = 8
    config.train.save_every = 16
    return config
