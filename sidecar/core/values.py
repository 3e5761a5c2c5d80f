"""``value_type``: a frozen dataclass to type checkers, a cheaper one at run time.

A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``,
which costs about a tenth of a microsecond a field. The Call path builds several
such objects per call (request, trace, upstream exchange, result), so for those
the immutability is checked statically instead: mypy reports any assignment to
a field (``dataclass_transform(frozen_default=True)``), and ``__slots__`` keeps
an object from growing new attributes at run time. Unlike a frozen dataclass,
an instance is not hashable; use ``dataclass(frozen=True)`` where one must be.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True)
def value_type(cls: type[T]) -> type[T]:
    return dataclass(slots=True)(cls)
