"""The original's teapot headline run: 230 points, 80,000 training images, 20 epochs, 128x128.

    python launch.py --config=configs/teapot.py --workdir=runs/teapot \
        --config.data.object=PATH/TO/teapot_large.obj

The teapot OBJ is the original HOLLy's objs/teapot_large.obj (not shipped
here). The original took about 4 hours on one GTX 2080 Ti; on a CPU this is
days, so use a GPU: on one H200 it ran in 119 s end to end with
--config.train.batch_size=250 (README, "Speed and scale"); the original's
batch 20 runs at about 8,500 images/s there.
"""

from configs import default
from holly_jax import schedule


def get_config():
    config = default.get_config()
    config.data.object = "teapot_large.obj"
    config.data.train_size = 80000
    config.points.num = 230
    config.sigma.list = ",".join(str(s) for s in schedule.TEAPOT_SIGMAS)
    config.train.epochs = 20
    return config
