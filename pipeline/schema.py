"""Config dataclasses read as a schema: :func:`default_of`, the one place a command-line flag reads the default of
the field it sets (the dataclass holds it; no flag table writes it again).

A base module (standard library only): the pipeline's, train's and the console scripts' configs all use it, and
``shard-imagenet`` builds its flags with it without importing torch.
"""

from __future__ import annotations

import dataclasses


def default_of(cls: type, name: str) -> object:
    """The default of field ``name`` of the dataclass ``cls`` (its ``default_factory`` called, so a factory such as
    the core count is evaluated now).

    Raises:
        KeyError: no such field, or a field without a default.
    """
    for field in dataclasses.fields(cls):
        if field.name == name:
            if field.default is not dataclasses.MISSING:
                return field.default
            if field.default_factory is not dataclasses.MISSING:
                return field.default_factory()
            break
    raise KeyError(f"{cls.__name__}.{name}: no such field with a default")
