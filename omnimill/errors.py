"""Errors a user can act on. The CLI prints their message on one line and exits non-zero."""


class UserError(Exception):
    """Wrong input: a missing path, an unknown name, a store of another corpus. Says what to do."""


class SampleError(Exception):
    """One sample could not be labelled. `stage` says where: read, decode, or a teacher's name."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
