"""`omnimill fetch URLS_FILE OUT`: the command of the fetch job (engine/fetch.py). Thin: parse, call, print.

cli.py registers `fetch_command` as the `fetch` verb; `python -m omnimill.fetch_cli URLS_FILE OUT` runs it
alone. Exit codes as every job's: 0 every URL fetched; 3 some URLs failed (each recorded with its stage
and reason: `omnimill fetch` again retries the transient ones); 4 units failed or lack a marker; 2 wrong
input.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console

from omnimill.corpus.fetch import FetchSettings
from omnimill.errors import UserError, fail

console = Console()
app = typer.Typer(help="Fetch the images of a URL list into a fetched store.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)


@app.command("fetch")
def fetch_command(
    urls: Annotated[str, typer.Argument(help="URL list: text (one URL a line), .jsonl or .csv with url, optional "
                                             "key and caption/alt columns; local path or fsspec URL.")],
    out: Annotated[str, typer.Argument(help="Fetched store to create or resume (Zarr v3 + a tar of images per "
                                            "unit), e.g. fetched.zarr")],
    timeout: Annotated[float, typer.Option(help="Seconds per connect and per read of one request.")]
    = FetchSettings.timeout,
    retries: Annotated[int, typer.Option(help="Extra attempts per URL for a transient failure (timeout, reset, "
                                              "body cut short, 408/429/5xx), with backoff.")] = FetchSettings.retries,
    backoff: Annotated[float, typer.Option(help="Seconds before the first extra attempt; doubled each time.")]
    = FetchSettings.backoff,
    max_bytes: Annotated[int, typer.Option(help="Larger bodies are refused (Content-Length, or counted).")]
    = FetchSettings.max_bytes,
    max_pixels: Annotated[int, typer.Option(help="Images whose header says more pixels are refused undecoded "
                                                 "(decompression bombs).")] = FetchSettings.max_pixels,
    max_redirects: Annotated[int, typer.Option(help="Redirects followed per URL; a loop fails at once.")]
    = FetchSettings.max_redirects,
    max_seconds: Annotated[float, typer.Option(help="Seconds for one whole request (a body that drips is cut).")]
    = FetchSettings.max_seconds,
    per_host: Annotated[int, typer.Option(help="Requests in flight to one host (per worker process).")]
    = FetchSettings.per_host,
    threads: Annotated[int, typer.Option(help="Requests a unit has in flight.")] = 16,
    urls_per_unit: Annotated[Optional[int], typer.Option(help="URLs per work unit (new stores; default 64).")]
    = None,
    workers: Annotated[Optional[int], typer.Option(help="Workers of the embedded cluster (threads).")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Join an existing Dask cluster.")] = None,
    unit_retries: Annotated[int, typer.Option(help="Extra attempts for a unit whose task failed.")] = 2,
    force: Annotated[bool, typer.Option("--force", help="Fetch every URL again from scratch.")] = False,
    repair: Annotated[bool, typer.Option("--repair", help="Verify the committed units first and fetch the "
                                                          "damaged ones again.")] = False,
    break_lock: Annotated[bool, typer.Option("--break-lock", help="Take over a store locked by a run on another "
                                                                  "host that is known dead.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress")] = False,
):
    """Fetch every URL of URLS into OUT: each image's bytes, type, size and sha256, or its failure (stage,
    reason, HTTP status). Resumes where it stopped; run again, it retries only the transient failures."""
    from omnimill.engine.fetch import FetchOptions, fetch_images

    options = FetchOptions(timeout=timeout, url_retries=retries, backoff=backoff, max_bytes=max_bytes,
                           max_pixels=max_pixels, max_redirects=max_redirects, max_seconds=max_seconds,
                           per_host=per_host, threads=threads,
                           urls_per_unit=urls_per_unit, workers=workers, scheduler=scheduler, retries=unit_retries,
                           force=force, repair=repair, break_lock=break_lock, progress=not no_progress)
    try:
        result = fetch_images(urls, out, options)
    except UserError as e:
        fail(str(e))
    fetched = sum(s.get("fetched", 0) for s in result.unit_stats)
    megabytes = sum(s.get("bytes", 0) for s in result.unit_stats) / 1e6
    console.print(f"{result.units_done}/{result.units_planned} units, {fetched} URLs requested "
                  f"({result.samples_retried} retried) in {result.seconds:.1f}s, {megabytes:.1f} MB kept; the store "
                  f"holds {result.store_failed} failures ({result.store_final} final); {len(result.units_failed)} "
                  "failed units", highlight=False, soft_wrap=True)
    if result.units_planned == 0:
        console.print("nothing to do: every unit is committed and no failure is retryable (use --force to fetch "
                      "again)", soft_wrap=True)
    raise typer.Exit(result.exit_code)


if __name__ == "__main__":
    app()
