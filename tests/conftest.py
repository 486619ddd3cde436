"""Test-wide settings: run on the CPU, compile cheaply, and share compiled programs between the tests of one
session.

Many tests (and the subprocesses and notebook kernels they start) compile the
same small programs; a persistent XLA cache, fresh for each pytest session and
removed at its end, compiles each once. Most of the suite's time is XLA
compiling programs it then runs for a few steps, so XLA's backend optimises at
level 0 (LLVM's cheapest): a cold tiny run's CPU time 39 -> 31 s (the whole
suite's wall clock moved 847 to 990 s between runs on one machine, too noisy to
show it). Results do not depend on the cache; at
level 0 they agree with the default's to float32 rounding (unvectorised sums add
in another order).
"""

import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_CHEAP = "--xla_backend_optimization_level=0"
if _CHEAP not in os.environ.get("XLA_FLAGS", ""):  # the workers and subprocesses inherit it
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_CHEAP}".strip()
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="holly-jax-test-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
else:
    _CACHE = None


def pytest_sessionfinish(session, exitstatus):
    if _CACHE is not None:
        shutil.rmtree(_CACHE, ignore_errors=True)


# Tests that run whole trainings (notebooks, killed and resumed runs, several processes) start first, and
# pytest.ini's "--dist worksteal" lets an idle worker take queued tests from the other: the run does not end
# with one worker alone on a long test.
SLOW_FILES = (
    "test_notebooks.py",
    "test_distributed.py",
    "test_faults.py",
    "test_refine.py",
    "test_fsc.py",
    "test_sharding.py",
    "test_train.py",
    "test_evaluate.py",
    "test_symmetry_imposed.py",
    "test_locs.py",
    "test_heads.py",
    "test_fits_training.py",
)


def pytest_collection_modifyitems(session, config, items):
    first = {name: rank for rank, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: first.get(item.path.name, len(SLOW_FILES)))  # stable within each file
