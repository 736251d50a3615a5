"""Parameter checks shared by every entry point, so a bad value is refused before any work with its name in it."""

import math
import re
from collections.abc import Iterable

from .failures import ActionableError

MAX_WINDOWS = 100_000   # about 8 h on a CPU: a larger run needs the user's confirmation (ALLOW_LARGE, --allow-large)


class ParameterError(ActionableError, ValueError):
    """A parameter value that cannot be used; the text names the parameter and says what to give."""


def finite_number(name: str, value: float | None, minimum: float | None = None,
                  maximum: float | None = None) -> float | None:
    """``value`` as a float checked to be finite and within [minimum, maximum]; None stays None (unset)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} is {value!r}, not a number: give a number") from None
    if not math.isfinite(number):
        raise ParameterError(f"{name} is {value}: give a finite number")
    if minimum is not None and number < minimum or maximum is not None and number > maximum:
        bounds = (f"between {minimum:g} and {maximum:g}" if minimum is not None and maximum is not None
                  else f"at least {minimum:g}" if minimum is not None else f"at most {maximum:g}")
        raise ParameterError(f"{name} is {value}: give a number {bounds}")
    return number


def band_numbers(name: str, value: str | int | Iterable[str | int] | None) -> list[int] | None:
    """1-based band numbers from a list, or from text as qgis_process passes it ('3,2,1', '3 2 1', '3;2;1');
    None or empty: the default bands."""
    if value is None or value == "" or value == []:
        return None
    parts = value if isinstance(value, (list, tuple)) else [value]
    items = [item for part in parts
             for item in (re.split(r"[,;\s]+", part.strip()) if isinstance(part, str) else [part])]
    bands = []
    for item in items:
        if item == "":
            continue
        try:
            band = int(item)
        except (TypeError, ValueError):
            raise ParameterError(f"{name} has {item!r}, not a band number: give band numbers from 1, e.g. "
                                 f"{name}=3,2,1 (or repeat the parameter: --{name}=3 --{name}=2 --{name}=1)") from None
        if band < 1:
            raise ParameterError(f"{name} has band {item}: bands are numbered from 1, e.g. {name}=3,2,1")
        bands.append(band)
    return bands or None
