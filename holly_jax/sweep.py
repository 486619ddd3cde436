"""Sweeps: train and evaluate a list of config variants, and gather their results into a pandas DataFrame.

    from holly_jax import sweep
    frame = sweep.train_variants("configs/quick.py", {"baseline": {}, "dropout": {"data.dropout": 0.1}},
                                 root="runs/robustness", scale="tiny")

A variant is a dict of dotted config overrides, the same fields launch.py takes
as ``--config.X=Y``; it trains in ``ROOT/NAME`` and is then evaluated. A
finished variant is read back rather than rerun, and an interrupted one resumes
from its checkpoint, so a notebook can be executed again cheaply. ``scale``
sizes every variant: "tiny" (32x32, 32 steps: seconds on a CPU, for tests and
CI), "cpu" (the config's images at 1,500 steps: about two minutes a variant
on a 2-core CPU for configs/quick.py:single_head), "quick" (the config as
written: five to eight minutes for configs/quick.py) or "full" (128x128 and
the original's data sizes: for a GPU). Scales also size the refinement
(1,000 images, batch 100).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd

from holly_jax import input_pipeline, outputs, pipeline, refine, schedule, train, workdirs
from holly_jax.atomic import write_atomic
from holly_jax.errors import InputError
from holly_jax.setup import create_setup

REPO = Path(__file__).resolve().parents[1]

SCALES: dict[str, dict[str, Any]] = {
    "tiny": {
        "data.image_height": 32,
        "data.image_width": 32,
        "data.train_size": 256,
        "data.test_size": 32,
        "data.valid_size": 32,
        "train.batch_size": 16,
        "train.epochs": 2,
        "train.steps": 0,
        "train.log_every": 16,
        "train.save_every": 32,
        "points.num": 60,
        "refine.images": 64,
        "refine.batch_size": 16,
    },
    "cpu": {
        "train.steps": 1500,
        "train.log_every": 100,
        "train.save_every": 500,
        "refine.images": 1000,
        "refine.batch_size": 100,
    },
    "quick": {"refine.images": 1000, "refine.batch_size": 100},
    "full": {
        "data.image_height": 128,
        "data.image_width": 128,
        "data.train_size": 80000,
        "sigma.list": ",".join(str(s) for s in schedule.TEAPOT_SIGMAS),
        "train.batch_size": 32,
        "train.epochs": 20,
        "train.steps": 0,
        "train.log_every": 500,
        "train.save_every": 5000,
    },
}
DONE = "sweep.json"  # written last, atomically: the variant is finished
AFTER_TRAINING = ("refine", "search")  # config sections that change nothing before the refinement


def load_config(base: str | Path | ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A config file's ConfigDict (a path like configs/quick.py, relative to the repository if not found
    here, with an optional variant after ':' as launch.py takes it: configs/quick.py:single_head), or a
    copy of a ConfigDict."""
    if isinstance(base, ml_collections.ConfigDict):
        return ml_collections.ConfigDict(base.to_dict())
    name, _, variant = str(base).partition(".py:")
    path = Path(f"{name}.py" if variant else base)
    path = path if path.exists() else REPO / path
    if not path.is_file():
        raise InputError(path, "config file not found")
    spec = importlib.util.spec_from_file_location(f"sweep_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not variant:
        return module.get_config()
    try:
        return module.get_config(variant)
    except TypeError:
        raise InputError(path, f"this config takes no variant (got {variant!r})") from None
    except ValueError as e:
        raise InputError(path, str(e)) from None


def override(cfg: ml_collections.ConfigDict, changes: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Set dotted fields (``"data.dropout": 0.1``); an unknown field is a one-line InputError."""
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for name in parents:
            if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
                raise InputError(None, f"unknown config field {dotted!r}")
            node = node[name]
        if leaf not in node:
            raise InputError(None, f"unknown config field {dotted!r}")
        node[leaf] = value
    return cfg


def variant_config(
    base: str | Path | ml_collections.ConfigDict, changes: Mapping[str, Any], scale: str = "quick"
) -> ml_collections.ConfigDict:
    """The base config at ``scale``, then the variant's own changes (which win)."""
    if scale not in SCALES:
        raise InputError(None, f"unknown scale {scale!r}; expected one of {tuple(SCALES)}")
    cfg = override(load_config(base), SCALES[scale])
    cfg = override(cfg, changes)
    if not Path(cfg.data.object).is_absolute() and not Path(cfg.data.object).exists():
        cfg.data.object = str(REPO / cfg.data.object)  # bundled shapes, wherever the notebook runs
    return cfg


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A config as JSON reads it back, over today's defaults (a run saved before a field existed ran as its
    default), without ``train.report`` (the sweep evaluates on its own, whatever it says; runs saved before
    it was ignored recorded False)."""
    config = json.loads(json.dumps(workdirs.with_defaults(config).to_dict()))
    config.get("train", {}).pop("report", None)
    return config


def _training_part(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in _comparable(config).items() if k not in AFTER_TRAINING}


def _share_training(cfg: ml_collections.ConfigDict, workdir: Path) -> str | None:
    """Start a fresh ``workdir`` from a finished sibling's training when the two configs differ only in what
    comes after it (``AFTER_TRAINING``): the same seed and settings train to the same state, so its training
    checkpoints, files and records are copied and only the refinement runs. Returns the sibling's name."""
    if workdir.exists() and any(workdir.iterdir()):
        return None
    wanted = _training_part(cfg.to_dict())
    for sibling in sorted(workdir.parent.glob(f"*/{DONE}")) if workdir.parent.exists() else []:
        source = sibling.parent
        if _training_part(json.loads(sibling.read_text(encoding="utf-8")).get("config", {})) != wanted:
            continue
        step = max(int(p.name) for p in (source / "checkpoints").iterdir() if p.name.isdigit())
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source / "checkpoints" / str(step), workdir / "checkpoints" / str(step))
        for name in ("plys", "pictures", "tb", "initial.obj", "initial.ply", "scale.json"):
            if (source / name).is_dir():
                shutil.copytree(source / name, workdir / name)
            elif (source / name).exists():
                shutil.copy2(source / name, workdir / name)
        records = [r for r in outputs.MetricsLog(source / "metrics.jsonl").read() if r.get("phase") != "refine"]
        write_atomic(workdir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
        outputs.write_json(workdir / "config.json", cfg.to_dict())
        return source.name
    return None


def train_variant(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Train (or resume) and evaluate one config in ``workdir``; a finished one is read back. A fresh one
    that differs from a finished sibling under the same root only after training starts from its training
    (``train_s`` then times the refinement alone, and ``shared_training`` names the sibling)."""
    workdir = Path(workdir)
    done = workdir / DONE
    if done.exists():
        saved = json.loads(done.read_text(encoding="utf-8"))
        if _comparable(saved.get("config", {})) == _comparable(cfg.to_dict()):
            return saved
    shared = _share_training(cfg, workdir)
    start = time.perf_counter()
    pipeline.fit(cfg, workdir)
    trained = time.perf_counter()
    results = pipeline.evaluate_workdir(workdir, pose_texts=(), quiet=True)
    record = {
        "config": cfg.to_dict(),
        "train_s": trained - start,
        "eval_s": time.perf_counter() - trained,
        "results": {k: v for k, v in results.items() if not isinstance(v, (list, dict))},
        "last": _last_records(workdir),
        **({"shared_training": shared} if shared else {}),
    }
    outputs.write_json(done, record)
    return json.loads(done.read_text(encoding="utf-8"))


def _last_records(workdir: Path) -> dict[str, Any]:
    """The last logged training and refinement records, and the mean training rate."""
    records = outputs.MetricsLog(workdir / "metrics.jsonl").read()
    trained = [r for r in records if r.get("phase") != "refine"]
    refined = [r for r in records if r.get("phase") == "refine"]
    final = trained[-1] if trained else {}
    last = {f"final_{k}": final[k] for k in ("train_loss", "test_loss", "sigma_in") if k in final}
    if trained:
        last["images_per_s"] = sum(r["images_per_s"] for r in trained) / len(trained)
    if refined:
        last["refine_loss"] = refined[-1]["train_loss"]
    return last


def train_variants(
    base: str | Path | ml_collections.ConfigDict,
    variants: Mapping[str, Mapping[str, Any]],
    root: str | Path,
    scale: str = "quick",
    quiet: bool = False,
) -> pd.DataFrame:
    """Train and evaluate every variant (``{name: {dotted field: value}}``) under ``root/name``; one row per
    variant: its overrides, the evaluation's scalars (aligned Chamfer, rotation errors, held-out loss),
    the last logged losses, images/s, and the training and evaluation times in seconds."""
    rows = []
    for name, changes in variants.items():
        cfg = variant_config(base, changes, scale)
        if not quiet:
            print(f"[{name}] {', '.join(f'{k}={v}' for k, v in changes.items()) or 'base config'}", flush=True)
        record = train_variant(cfg, Path(root) / name)
        rows.append(
            {
                "variant": name,
                **{k: v for k, v in changes.items()},
                "train_s": record["train_s"],
                "eval_s": record["eval_s"],
                **record["last"],
                **record["results"],
            }
        )
    return pd.DataFrame(rows).set_index("variant")


def history(root: str | Path, names: list[str] | None = None) -> pd.DataFrame:
    """Every logged record of the variants under ``root`` (all if ``names`` is None), one row each, for
    plotting training curves side by side."""
    root = Path(root)
    names = names if names is not None else sorted(p.name for p in root.iterdir() if (p / "metrics.jsonl").exists())
    frames = [pd.DataFrame(outputs.MetricsLog(root / n / "metrics.jsonl").read()).assign(variant=n) for n in names]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def step_rates(cfg: ml_collections.ConfigDict, steps: int = 30) -> dict[str, float]:
    """Steps per second of a config's training step and (with ``refine.steps`` > 0) its refinement step,
    timed over ``steps`` steps after compiling and ``steps`` untimed warm-up steps (on a CPU the first
    few dozen steps after compiling run several times slower than the rest), without writing anything:
    for comparisons at equal wall-clock time. With ``refine.relabel_every``, the refinement's steps are
    timed past its symmetry breaking (relabelling included) and the breaking's seconds are ``break_s``. With
    ``search.use="refine"``, ``search_s`` is what the global search adds to starting the refinement's
    table (compiling included, as a run compiles it once); with ``search.again_at``, ``again_s`` is the
    seconds of the late search pass."""
    setup = create_setup(cfg)
    state = setup.replicate(train.create_state(setup, train.initial_points(setup)))
    fns = train.make_steps(setup)
    order = input_pipeline.epoch_order(setup, 0)
    batches = [
        setup.split(input_pipeline.host_batch(setup, order[i * setup.batch_size :][: setup.batch_size], i))
        for i in range(2)
    ]

    def timed(step, state, args):
        for i in range(steps + 1):  # compile, then warm up
            state, metrics = step(state, *args[i % len(args)])
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for i in range(steps):
            state, metrics = step(state, *args[i % len(args)])
        jax.block_until_ready(metrics)
        return steps / (time.perf_counter() - start), state

    rates = {}
    rates["train"], state = timed(fns.train, state, [(setup.ds.arrays, b) for b in batches])
    if refine.enabled(setup):
        ph = refine.phase(setup)
        start = time.perf_counter()
        rstate = refine.initial_state(setup, state, ph)
        if cfg.search.use == "refine":  # the same start without the search, both compiled afresh
            seconds = time.perf_counter() - start
            plain = create_setup(override(cfg.copy_and_resolve_references(), {"search.use": "none"}))
            start = time.perf_counter()
            refine.initial_state(plain, state, ph)
            rates["search_s"] = seconds - (time.perf_counter() - start)
        if ph.relabel_every:  # timed past the symmetry breaking, relabelling as often as it will; its cost
            start = time.perf_counter()
            rstate, _ = refine.break_symmetry(setup, ph, setup.replicate(rstate))
            rates["break_s"] = time.perf_counter() - start
            rstate = rstate.replace(step=jnp.int32(ph.relabel_after + 1))
        if ph.search_again:  # the late search pass (compiled afresh, as a run does)
            start = time.perf_counter()
            rstate, _ = refine.search_again(setup, ph, setup.replicate(rstate))
            rates["again_s"] = time.perf_counter() - start
        rows = np.arange(ph.batch_size, dtype=np.int32)
        args = [
            (
                setup.ds.arrays,
                setup.split(rows),
                setup.split(input_pipeline.host_batch(setup, np.asarray(rstate.items_M)[rows], setup.total_steps)),
            )
        ]
        rates["refine"], _ = timed(refine.make_step(setup, ph), rstate, args)
    return rates
