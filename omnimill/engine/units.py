"""Run work units on a Dask cluster: bounded in flight, retried, then swept against the commit markers.

The runner of the one unit job (job.py): `label`, `tokenize` and `shards text`. A task is any object
with `unit`, `start`, `stop`, `attempt` and `workers_per_host`; `fn(task)` runs on a worker and returns
stats with `n` (samples) and `failed` ({name: count}). `replan()` lists the tasks whose markers are
still missing: after the tasks return (and `flush` ran on every worker), those run again.

`retries` counts extra attempts per unit, whatever made the attempt fail (the task raised, its worker
died, or it returned but its commit did not land): at most 1 + retries attempts of any unit in one run.
A task that returns `{"fatal": message}` (a teacher whose checkpoint does not load) would fail the same
on every attempt: the run stops at once and the caller gets a `UserError` with that message.
"""

from __future__ import annotations

import uuid
from collections import deque
from typing import Callable

from omnimill.engine import cluster
from omnimill.engine.progress import Progress
from omnimill.errors import UserError


def run_units(tasks: list, fn: Callable, replan: Callable[[], list], stats: dict, *, scheduler=None,
              workers=None, local_directory=None, max_in_flight=None, retries: int = 2, progress: bool = True,
              flush: Callable | None = None, verb: str = "labelling", processes: bool = True) -> list[dict]:
    """Run `tasks`; fill `stats` {unit: stats of its last completed run}; return the units that failed.
    `processes`: an embedded cluster's workers are processes (False: threads in this process)."""
    with cluster.connect(scheduler, workers, local_directory, processes=processes) as client:
        per_host = cluster.workers_per_host(client)
        limit = max_in_flight or 2 * max(1, sum(per_host.values()))
        errors: dict[int, str] = {}
        attempts: dict[int, int] = {}  # unit -> attempts so far, across task retries and sweeps
        total = sum(t.stop - t.start for t in tasks)
        missing = tasks
        with Progress(total, client.dashboard_link, enabled=progress, verb=verb) as bar:
            while tasks:
                _submit(client, fn, tasks, per_host, limit, retries, stats, errors, attempts, bar)
                if flush is not None:
                    for worker, failures in client.run(flush).items():
                        for failure in failures:
                            bar.note(f"commit failed on {worker}: {failure}")
                missing = replan()
                tasks = [t for t in missing if attempts.get(t.unit, 0) <= retries]
                if tasks:
                    bar.note(f"{len(tasks)} units have no commit marker yet; running them again")
                    bar.extend(sum(t.stop - t.start for t in tasks))
                    for task in tasks:
                        task.attempt = attempts.get(task.unit, 0)
    return [{"unit": t.unit, "error": errors.get(t.unit, "no commit marker after the run")} for t in missing]


def _submit(client, fn, tasks, per_host, max_in_flight, retries, stats, errors, attempts, bar) -> None:
    """Keep at most `max_in_flight` units on the cluster; retry a unit whose task raised or whose worker died."""
    from distributed import as_completed

    run_id = uuid.uuid4().hex[:8]
    resources = {"GPU": 1} if _has_gpu_resource(client) else None
    queue = deque(tasks)
    in_flight: dict = {}
    completed = as_completed()

    def submit(task):
        task.workers_per_host = per_host
        attempts[task.unit] = attempts.get(task.unit, 0) + 1
        future = client.submit(fn, task, key=f"omnimill-unit-{task.unit}-{run_id}-{task.attempt}", pure=False,
                               resources=resources)
        in_flight[future] = task
        completed.add(future)

    while queue and len(in_flight) < max_in_flight:
        submit(queue.popleft())
    for future in completed:
        task = in_flight.pop(future)
        try:
            result = future.result()
        except UserError:
            client.cancel(list(in_flight))
            raise
        except Exception as e:  # the task raised, or its worker died too often (KilledWorker)
            errors[task.unit] = f"{type(e).__name__}: {e}"
            if attempts[task.unit] <= retries:
                task.attempt = attempts[task.unit]
                queue.appendleft(task)
                bar.note(f"unit {task.unit} failed ({type(e).__name__}); retry {task.attempt}")
            else:
                bar.note(f"unit {task.unit} failed after {attempts[task.unit]} attempts: {e}")
        else:
            if "fatal" in result:  # the same on every attempt (a checkpoint that does not load): stop here
                client.cancel(list(in_flight))
                raise UserError(result["fatal"])
            errors.pop(task.unit, None)
            stats[task.unit] = result  # a unit run again (sweep) counts once
            bar.advance(result["n"], sum(result["failed"].values()))
        while queue and len(in_flight) < max_in_flight:
            submit(queue.popleft())


def _has_gpu_resource(client) -> bool:
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return bool(workers) and all("GPU" in (w.get("resources") or {}) for w in workers)
