"""The base of every config section, apart from the file that assembles them.

``config.py`` builds the whole file from sections; the routing keys
(``routing/config.py``) and ``keep_warm`` (``keep_warm.py``) define sections of their own
next to the code that reads them. All are frozen, strict and closed to unknown keys, so
every section reports problems (and suggests keys) the same way.
"""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import BaseModel, ConfigDict
from pydantic.fields import FieldInfo


class Section(BaseModel):
    """One part of the config: frozen, strict, closed to unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    # A section listed in the file as ``NAME: {...}`` keeps NAME in this field.
    key_field: ClassVar[str | None] = None

    def replace(self, **changes: object) -> Self:
        """A copy with ``changes``, validated (``model_copy(update=...)`` is not).

        By field name: a section with aliased fields sets ``populate_by_name``.
        """
        return self.model_validate({**dict(self), **changes})

    @classmethod
    def file_keys(cls) -> list[str]:
        """The keys this section takes in the file."""
        return [file_key(n, f) for n, f in cls.model_fields.items() if n != cls.key_field]


def file_key(name: str, info: FieldInfo) -> str:
    """A field's key in the file (its alias, if it has one)."""
    return info.validation_alias if isinstance(info.validation_alias, str) else name
