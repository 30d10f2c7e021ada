"""Models and records made from values paystream built itself, without their checks again.

Validation is for what comes in (commands, stored records, provider answers). A model
made on the hot path from values already validated or typed (a gateway request from a
command's validated data, an entity from a request and its provider's answer) gains
nothing from being validated again, and that costs a few microseconds per model, several
models per command. ``model_construct`` is no way out: its per-field Python work costs
more than validating.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = ["built", "frozen_record"]

M = TypeVar("M", bound=BaseModel)
D = TypeVar("D")

_set = object.__setattr__
# Model → its field names in declaration order, and as a set (checked fit for ``built``
# once).
_FITS: dict[type[BaseModel], tuple[tuple[str, ...], frozenset[str]]] = {}


def built(model: type[M], fields: dict[str, Any]) -> M:
    """``model.model_validate(fields)``, for ``fields`` that validation would leave as
    they are: every field of the model, in its declared order, each value already what
    validation makes of it (an exact ``str``, ``int`` or ``bool``, an enum member, a
    nested model instance, a container no one else holds). What ``model_construct`` sets,
    set directly; ``fields`` becomes the instance's ``__dict__``.

    Only for values made by paystream, never a sender's or a provider's: nothing is
    checked but the names. Those are, as they cost little and a slip would go unseen
    otherwise: a dump writes ``__dict__`` in its order (and a field left out would be
    missing from it), so a ``TypeError`` is raised unless they are exactly the model's.
    """
    fit = _FITS.get(model) or _fit(model)
    if tuple(fields) != fit[0]:
        raise TypeError(f"{model.__name__} needs exactly its fields, in order: {fit[0]}")
    obj = model.__new__(model)
    _set(obj, "__dict__", fields)
    _set(obj, "__pydantic_fields_set__", set(fit[1]))  # (a copy: a set is updated in place)
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


def _fit(model: type[BaseModel]) -> tuple[tuple[str, ...], frozenset[str]]:
    """``model``'s field names, once it is known to need nothing but its fields set: no
    extra fields kept, no private attributes, no post-init hook, not a root model."""
    if (
        model.model_config.get("extra") == "allow"
        or model.__private_attributes__
        or model.__pydantic_post_init__ is not None
        or model.__pydantic_root_model__
    ):
        raise TypeError(f"{model.__name__} cannot be built without validation")
    names = tuple(model.model_fields)
    fit = _FITS[model] = (names, frozenset(names))
    return fit


def frozen_record(cls: type[D], fields: dict[str, Any]) -> D:
    """``cls(**fields)`` for a frozen dataclass made on the hot path (a few per command),
    without its ``__init__``, which sets each field through ``object.__setattr__``
    (most of its cost: about a third of it is left). The same object: a dataclass
    without ``__post_init__``, slots, ``InitVar`` or default factories is its
    ``__dict__``, the fields in declaration order, which ``fields`` must be (equality,
    hash, repr and ``asdict`` read the fields, not the dict). Nothing is checked: for
    the classes tests/test_built.py holds to that, and values paystream made.
    """
    obj = _new(cls)
    _set(obj, "__dict__", fields)
    return obj


_new = object.__new__
