"""Get a Dask client: an embedded LocalCluster by default, or an existing scheduler.

The embedded cluster runs worker processes, one thread each; a light job (tokenizing text) may ask for
threads in this process instead, which start in a moment and need no imports repeated per worker.

GPU: with dask-cuda installed and CUDA visible, the embedded cluster is a LocalCUDACluster (one worker
per GPU, CUDA_VISIBLE_DEVICES set per worker); on a real cluster start `dask cuda worker`. GPUs are
counted without importing torch in the client (`_cuda_devices`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
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
    """Refuse a wrong --scheduler before a job writes anything. A TCP scheduler (address, or a scheduler
    file naming one) is only knocked on (one socket opened and closed, milliseconds): the job's one Client
    handshake is run_units' (a Client made here too cost a second connect per run). Other protocols
    (tls://, ucx://) connect a Client once and leave."""
    address = scheduler
    if scheduler.endswith(".json"):
        try:
            with open(scheduler) as f:
                address = json.load(f)["address"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot read the Dask scheduler file {scheduler} ({type(e).__name__}: {e}); give the "
                            "file `dask scheduler --scheduler-file` wrote, or leave out --scheduler") from None
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    if address.startswith("tcp://") and port.isdigit():
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
        except OSError as e:
            raise UserError(f"cannot reach Dask scheduler {scheduler} ({e}); start one with `dask scheduler` "
                            "or leave out --scheduler to use an embedded cluster") from None
        return
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
    """GPUs this host shows, without importing torch in the client (12.3 s under load, for nothing on a
    CPU box): CUDA_VISIBLE_DEVICES when set, else the NVIDIA driver's own list (`_nvidia_gpus`). torch
    decides only where it is imported already (free) or where a ROCm driver (/dev/kfd) is the GPU's."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    if "torch" not in sys.modules:
        found = _nvidia_gpus()
        if found or not os.path.exists("/dev/kfd"):
            return found
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def _has_dask_cuda() -> bool:
    """dask-cuda is installed (its LocalCUDACluster gives each GPU a worker); looked up, not imported."""
    import importlib.util

    return importlib.util.find_spec("dask_cuda") is not None


@functools.cache
def _nvidia_gpus() -> int:
    """NVIDIA GPUs this process may use: one `GPU i: ...` line each from `nvidia-smi -L` (it lists only a
    container's own GPUs), else one folder each in /proc/driver/nvidia/gpus (a Linux driver without the
    tool); 0 without an NVIDIA driver. Cached: it does not change while the process lives."""
    if shutil.which("nvidia-smi") is not None:
        try:
            listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
            return sum(1 for line in listed.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0
