"""Get a Dask client: an embedded LocalCluster by default, or an existing scheduler.

The embedded cluster runs worker processes, one thread each; a light job (tokenizing text) may ask for
threads in this process instead, which start in a moment and need no imports repeated per worker.

GPU: with dask-cuda installed and CUDA visible, the embedded cluster is a LocalCUDACluster (one worker
per GPU, CUDA_VISIBLE_DEVICES set per worker); on a real cluster start `dask cuda worker`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections import Counter

from omnimill.errors import UserError


@contextlib.contextmanager
def connect(scheduler: str | None = None, workers: int | None = None, local_directory: str | None = None,
            quiet: bool = True, timeout: str = "20s", processes: bool = True):
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            if scheduler.endswith(".json"):
                client = Client(scheduler_file=scheduler, timeout=timeout)
            else:
                client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError) as e:
            raise UserError(f"cannot reach Dask scheduler {scheduler} ({e}); start one with `dask scheduler` "
                            "or leave out --scheduler to use an embedded cluster") from None
        with client:
            yield client
        return

    local_directory = local_directory or os.path.join(tempfile.gettempdir(), "omnimill-dask")
    n_gpus = _cuda_devices()
    kwargs = dict(threads_per_worker=1, local_directory=local_directory, dashboard_address=":0",
                  silence_logs=logging.ERROR if quiet else logging.WARNING)
    # A task whose worker dies is given back to omnimill at once (KilledWorker) rather than rerun by the
    # scheduler up to 3 times: `--retries N` then means N extra attempts. A cluster of your own keeps its
    # own setting (distributed.scheduler.allowed-failures), which multiplies with omnimill's retries.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        if n_gpus and processes and _has_dask_cuda():
            from dask_cuda import LocalCUDACluster

            cluster = LocalCUDACluster(n_workers=workers or n_gpus, **kwargs)
        else:
            cluster = LocalCluster(n_workers=workers or default_workers(), processes=processes, **kwargs)
    with cluster, Client(cluster) as client:
        yield client


def check_reachable(scheduler: str) -> None:
    """Connect once and leave: a wrong --scheduler is refused before a job writes anything."""
    with connect(scheduler, timeout="10s"):
        pass


def default_workers() -> int:
    """One worker per GPU; on CPU, one per two cores (each worker's torch gets two threads)."""
    return _cuda_devices() or max(1, (os.cpu_count() or 1) // 2)


def workers_per_host(client) -> dict[str, int]:
    """{host: number of workers}. A worker gives its torch (cores on its host / this) threads."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return dict(Counter(w["host"] for w in workers.values()))


def _cuda_devices() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def _has_dask_cuda() -> bool:
    try:
        import dask_cuda  # noqa: F401

        return True
    except ImportError:
        return False
