"""Errors a user can act on. The CLI prints their message on one line and exits non-zero."""


class UserError(Exception):
    """Wrong input: a missing path, an unknown name, a store of another corpus. Says what to do."""


class TeacherLoadError(UserError):
    """A teacher's checkpoint does not load on a worker: the same on every attempt, so the job stops (exit 2)."""


class SampleError(Exception):
    """One sample could not be labelled. `stage` says where: read, decode, or a teacher's name."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


def fail(message: str, code: int = 2):
    """CLI side: one line on stderr that says what to do, and a non-zero exit (2: wrong input)."""
    import typer
    from rich.console import Console

    Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
