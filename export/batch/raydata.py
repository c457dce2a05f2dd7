"""The one module that speaks to Ray: connect, run a callable class over rows in an actor pool.

Ray Data's batch API has renamed its pieces twice since 2.9 (``compute=ActorPoolStrategy`` ->
``concurrency=`` -> ``compute=`` again), so every Ray call is here, checked against the range
the ``batch`` extra pins (``ray[data]>=2.40,<3``; written and tested with 2.60).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..core.errors import BackendUnavailable, UserError, first_line

SUPPORTED = ">=2.40,<3"


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - the part we use
    except ImportError:
        raise BackendUnavailable("--engine ray needs Ray Data: pip install "
                                 "'resnet-deploy[batch]'") from None
    major, minor = (int(p) for p in ray.__version__.split(".")[:2])
    if not ((2, 40) <= (major, minor) < (3, 0)):
        raise BackendUnavailable(f"Ray {ray.__version__} is outside the supported range "
                                 f"{SUPPORTED}")
    return ray


def connect(address: str | None, cpus: int) -> dict[str, float]:
    """Join the cluster at ``address`` (or start a local Ray with ``cpus`` CPUs); its resources.

    Workers import this checkout's packages: its folder goes on their PYTHONPATH (the nodes
    must see the same paths, as they must see the sources).
    """
    ray = _ray()
    root = str(Path(__file__).resolve().parents[2])
    try:
        ray.init(address=address, num_cpus=None if address else cpus, include_dashboard=False,
                 ignore_reinit_error=True, log_to_driver=False, logging_level=logging.WARNING,
                 runtime_env={"env_vars": {"PYTHONPATH": root}})
    except ConnectionError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its plan and timings per run
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # shards come back whole and in order
    context.enable_progress_bars = False
    return dict(ray.cluster_resources())


def map_rows(rows: list[dict[str, Any]], actor: type, args: tuple[Any, ...], actors: int,
             cpus: float) -> Iterator[dict[str, Any]]:
    """``actor(*args)(batch)`` over ``rows``, one row a call, on ``actors`` actors of ``cpus``
    CPUs each; the results' rows in the input's order."""
    ray = _ray()
    dataset = ray.data.from_items(rows)
    params = inspect.signature(dataset.map_batches).parameters
    pool: dict[str, Any]
    if hasattr(ray.data, "ActorPoolStrategy") and "compute" in params:
        pool = {"compute": ray.data.ActorPoolStrategy(size=actors)}
    else:  # the 2.9-era spelling
        pool = {"concurrency": actors}
    mapped = dataset.map_batches(actor, batch_size=1, fn_constructor_args=args, num_cpus=cpus,
                                 batch_format="numpy", **pool)
    try:
        yield from mapped.iter_rows()
    except ray.exceptions.RayError as exc:  # an actor that cannot load the artifact, ...
        raise UserError(f"Ray Data stopped: {first_line(exc)}; rerun the same command to "
                        "continue from the committed shards") from None


def shutdown() -> None:
    ray = _ray()
    if ray.is_initialized():
        ray.shutdown()
