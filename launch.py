"""holly-jax launcher.

    python launch.py --config=configs/quick.py --workdir=runs/quick [--config.train.epochs=2 ...]   # train / resume
    python launch.py --mode=halves --config=configs/quick.py --workdir=runs/quick_halves   # half-set FSC
    python launch.py --mode=evaluate --workdir=runs/quick [--truth=shape.obj] [--pose=euler:90,0,0 ...]
    python launch.py --mode=infer --workdir=runs/quick --input=image.fits|folder [--output=DIR]
    python launch.py --mode=render --object=shape.obj --pose=euler:30,0,0 --sigma=2 --size=128 --output=out.fits

Thin on purpose: it parses flags and calls the library. Bad input ends with a
one-line error and a non-zero exit status.
"""

import contextlib
import os
import sys
import tempfile
import traceback
from pathlib import Path

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from holly_jax import evaluate, hosts, infer, outputs, pipeline
from holly_jax.errors import InputError

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "train", ["train", "halves", "evaluate", "infer", "render"], "What to do.")
flags.DEFINE_string("workdir", None, "Run folder: checkpoints and outputs; rerunning train resumes from it.")
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py), for --mode=train.", lock_config=True)
flags.DEFINE_string("truth", None, "evaluate: ground-truth OBJ/PLY (default: the run's data.object).")
flags.DEFINE_multi_string(
    "pose",
    None,
    "evaluate, render: a pose as aa:x,y,z (radians), euler:a,b,c (degrees, "
    "extrinsic xyz) or quat:w,x,y,z; repeat for several.",
)
flags.DEFINE_string("input", None, "infer: a FITS image or a folder of them.")
flags.DEFINE_string("output", None, "infer: output folder (default WORKDIR/infer); render: output .fits path.")
flags.DEFINE_string("object", None, "render: the OBJ/PLY to draw.")
flags.DEFINE_float("sigma", 2.0, "render: blur sigma in pixels.")
flags.DEFINE_string("size", "128", "render: image size, N or HxW.")
flags.DEFINE_list("translation", ["0", "0"], "render: translation tx,ty.")
flags.DEFINE_bool("normalise", False, "render: scale the image to sum 100 (basic normalisation).")
flags.DEFINE_bool(
    "distributed",
    False,
    "train on several processes or hosts (JAX's distributed runtime): the settings come from the flags "
    "below or the cluster (SLURM, Open MPI); the global batch is the config's batch size times the number "
    "of processes, and process 0 alone writes files.",
)
flags.DEFINE_string(
    "coordinator_address",
    None,
    "--distributed on plain hosts: HOST:PORT of process 0, the same for every process (default: "
    "$JAX_COORDINATOR_ADDRESS, or found by JAX under SLURM or Open MPI).",
)
flags.DEFINE_integer("num_processes", None, "--distributed on plain hosts: how many processes take part.")
flags.DEFINE_integer("process_id", None, "--distributed on plain hosts: this process's number, 0 .. num_processes - 1.")
flags.DEFINE_integer(
    "distributed_timeout",
    300,
    "--distributed: seconds to wait for every process to join, and for a silent process before the others stop.",
)


def fail(message: str, status: int = 1) -> None:
    print(f"error: {message}", file=sys.stderr)
    hosts.leave(status)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with every problem (a bad override, a missing config file) as one line."""
    path = None
    for arg in argv[1:]:
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1].split(":", 1)[0]  # a config file may take a variant after ':'
            if not os.path.isfile(path):
                fail(f"{path}: config file not found", 2)
    try:
        rest = FLAGS(argv)
        if FLAGS["config"].present:
            FLAGS.config.keys()  # the config file loads lazily: surface its errors here
        return rest
    except flags.Error as e:
        if "Traceback" in str(e):  # the config file raised (a bad variant): its own message, not the trace
            fail(f"{path}: {str(e).strip().splitlines()[-1].split(': ', 1)[-1]}", 2)
        fail(" ".join(str(e).split()), 2)
    except (AttributeError, KeyError) as e:
        field = str(e).strip("'\"")
        names = [a[2:].split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        culprit = next(
            (n for n in names if n == f"config.{field}" or n.endswith(f".{field}") or f".{field}." in n), None
        )
        fail(f"unknown config field {culprit or field!r} (the fields are listed in configs/default.py)", 2)
    except Exception as e:  # a config file that does not load
        fail(" ".join(str(e).split()), 2)


def start_distributed() -> None:
    try:
        hosts.join(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.distributed_timeout)
    except Exception as e:
        fail(f"--distributed: cannot join the other processes: {' '.join(str(e).split())[:300]}")


def require(*names: str) -> None:
    missing = [f"--{n}" for n in names if FLAGS[n].value is None]
    if missing:
        fail(f"--mode={FLAGS.mode} needs {' and '.join(missing)}", 2)


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}", 2)
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # keep library chatter (orbax, XLA) out of the way
    if FLAGS.distributed:
        hosts.quiet_runtime()
        start_distributed()
    logging.info("JAX process %d of %d, devices: %s", jax.process_index(), jax.process_count(), jax.devices())
    workdir = Path(FLAGS.workdir) if FLAGS.workdir else None
    if workdir is not None and workdir.exists() and not workdir.is_dir():
        fail(f"{workdir}: exists and is not a folder: --workdir must name a folder")
    keep_log = workdir is not None and (FLAGS.mode in ("train", "halves") or workdir.is_dir())
    keep_log = keep_log and jax.process_index() == 0  # with several processes, process 0 alone writes
    with contextlib.ExitStack() as stack:
        log = None
        if keep_log:
            try:
                log = stack.enter_context(outputs.console_log(workdir / "run.log"))
            except OSError as e:
                fail(f"{workdir}: cannot write run.log there ({e.strerror or e})")
        try:
            run_mode()
        except InputError as e:
            fail(hosts.lost(e) or str(e))
        except KeyboardInterrupt:
            fail("interrupted; rerun the same command to resume from the last checkpoint", 130)
        except Exception as e:  # anything unexpected: one line here, the traceback in a log
            text = " ".join(str(e).split())[:200]
            fail(hosts.lost(e) or f"unexpected {e.__class__.__name__}: {text} ({keep_traceback(log, workdir)})")


def keep_traceback(log, workdir: Path | None) -> str:
    """Write the current traceback to run.log (else to a file of its own) and say where it went."""
    try:
        if log is not None:
            log.write(traceback.format_exc())
            return f"the traceback is in {workdir / 'run.log'}"
        fd, path = tempfile.mkstemp(prefix="holly-jax-error-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(traceback.format_exc())
        return f"the traceback is in {path}"
    except OSError:
        return "the traceback could not be written: the disk may be full"


def run_mode() -> None:
    if FLAGS.mode == "train":
        require("config", "workdir")
        pipeline.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    elif FLAGS.mode == "halves":
        require("config", "workdir")
        pipeline.halves(FLAGS.config, FLAGS.workdir)
    elif FLAGS.mode == "evaluate":
        require("workdir")
        pipeline.evaluate_workdir(FLAGS.workdir, FLAGS.truth, FLAGS.pose or evaluate.DEFAULT_POSES)
    elif FLAGS.mode == "infer":
        require("workdir", "input")
        infer.infer(FLAGS.workdir, FLAGS.input, FLAGS.output)
    else:
        require("object", "output")
        try:
            translation = tuple(float(v) for v in FLAGS.translation)
        except ValueError:
            fail(f"--translation={','.join(FLAGS.translation)}: expected two numbers", 2)
        if len(translation) != 2:
            fail(f"--translation={','.join(FLAGS.translation)}: expected two numbers", 2)
        pose = (FLAGS.pose or ["euler:0,0,0"])[0]
        path = infer.render_file(
            FLAGS.object, FLAGS.output, pose, FLAGS.sigma, FLAGS.size, translation, FLAGS.normalise
        )
        print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    if hosts.wanted(sys.argv) and hosts.ENV not in os.environ:
        sys.exit(hosts.supervise(sys.argv))  # the run itself is a child process: see holly_jax/hosts.py
    app.run(main, flags_parser=parse_flags)
