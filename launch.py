"""holly-jax launcher: train (or resume) the run a config describes.

    python launch.py --config=configs/quick.py --workdir=runs/quick [--config.train.epochs=2 ...]

Thin on purpose: it parses flags and calls the library. Bad input ends with a
one-line error and exit status 1.
"""
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from holly_jax import train
from holly_jax.errors import InputError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Folder for checkpoints and outputs; rerunning resumes from it.")
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def fail(message: str, status: int = 1) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with every problem (a bad override, a missing config file) as one line."""
    for arg in argv[1:]:
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1].split(":", 1)[0]  # a config file may take an argument after ':'
            if not os.path.isfile(path):
                fail(f"{path}: config file not found", 2)
    try:
        rest = FLAGS(argv)
        FLAGS.config.keys()  # the config file loads lazily: surface its errors here
        return rest
    except flags.Error as e:
        fail(" ".join(str(e).split()), 2)
    except (AttributeError, KeyError) as e:
        field = str(e).strip("'\"")
        names = [a[2:].split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        culprit = next((n for n in names if n == f"config.{field}" or n.endswith(f".{field}") or f".{field}." in n),
                       None)
        fail(f"unknown config field {culprit or field!r} (the fields are listed in configs/default.py)", 2)
    except Exception as e:  # a config file that is missing or does not load
        fail(" ".join(str(e).split()), 2)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # keep library chatter (orbax, XLA) out of the way
    logging.info("JAX process %d of %d, devices: %s", jax.process_index(), jax.process_count(), jax.devices())
    try:
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
