"""A search space written in Hydra's sweep syntax, as Optuna distributions.

``choice(a,b,c)`` is categorical, ``range(start,stop,step)`` an integer or float grid (``stop``
excluded, as in Python), ``interval(low,high)`` a continuous range: ``tag(log, ...)`` samples it
on a log scale, integer bounds (``int(interval(1,8))``) or ``tag(int, ...)`` make it integer.
A plain ``key=value`` is fixed for every trial. Group choices work too:
``optimizer=choice(adam,adamw,sgd)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.errors import OverrideParseException
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from mnist_bench.cli import UserError


@dataclass
class SearchSpace:
    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)  # overrides every trial gets, as written

    def grid(self) -> dict[str, list[Any]]:
        """Every value of every parameter, for Optuna's grid sampler (no intervals)."""
        continuous = [key for key, d in self.distributions.items()
                      if not isinstance(d, CategoricalDistribution)]
        if continuous:
            raise UserError(f"sampler=grid needs choice(...) or range(...) for every parameter; "
                            f"{', '.join(continuous)} is an interval")
        return {key: list(d.choices) for key, d in self.distributions.items()}

    def trial_overrides(self, params: dict[str, Any]) -> list[str]:
        return [*self.fixed, *(f"{key}={value}" for key, value in params.items())]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _choices(override: Override) -> tuple[Any, ...]:
    """Numbers stay numbers (Optuna's plots order them); anything else is kept as written."""
    values = list(override.sweep_iterator())
    if all(_is_number(v) for v in values):
        return tuple(values)
    return tuple(override.sweep_string_iterator())


def _interval(key: str, sweep: IntervalSweep) -> BaseDistribution:
    log = "log" in sweep.tags
    if "int" in sweep.tags or (isinstance(sweep.start, int) and isinstance(sweep.end, int)):
        return IntDistribution(int(sweep.start), int(sweep.end), log=log)
    if log and sweep.start <= 0:
        raise UserError(f"{key}: a log interval needs a low bound > 0, not {sweep.start}")
    return FloatDistribution(float(sweep.start), float(sweep.end), log=log)


def _distribution(override: Override) -> BaseDistribution:
    key, sweep = override.get_key_element(), override.value()
    if isinstance(sweep, IntervalSweep):
        return _interval(key, sweep)
    if isinstance(sweep, (ChoiceSweep, RangeSweep)):
        choices = _choices(override)
        if not choices:
            raise UserError(f"{key}: the sweep has no values")
        return CategoricalDistribution(choices)
    raise UserError(f"{key}: unsupported sweep {sweep}")


def parse_search_space(overrides: Iterable[str]) -> SearchSpace:
    """The space of ``overrides`` (the sweeper's ``params``, then the command line's)."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as err:
        raise UserError(f"cannot read the search space: {str(err).splitlines()[0]}") from None
    space = SearchSpace()
    for override in parsed:
        key = override.get_key_element()
        space.distributions.pop(key, None)  # the command line wins over params
        space.fixed = [f for f in space.fixed if f.split("=", 1)[0] != key]
        if override.is_sweep_override():
            space.distributions[key] = _distribution(override)
        else:
            space.fixed.append(override.input_line)
    if not space.distributions:
        raise UserError("nothing to search: give at least one parameter a range, e.g. "
                        "'optimizer.lr=tag(log, interval(1e-4, 1e-1))' or "
                        "'trainer.batch_size=choice(32,64,128)'")
    return space
