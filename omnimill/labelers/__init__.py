"""Teachers: one file per family, a registry to find them by name. No Dask, no Zarr here."""

from omnimill.labelers.base import Batch, Field, Teacher, TeacherSpec
from omnimill.labelers.fields import KINDS, define_kind
from omnimill.labelers.registry import available, build, teacher_class

__all__ = ["KINDS", "Batch", "Field", "Teacher", "TeacherSpec", "available", "build", "define_kind", "teacher_class"]
