"""The allowed values of config keys, as rules a stage's checks apply: each failure is one
`ConfigError` line naming the key, its value and what is allowed."""

from __future__ import annotations

from collections.abc import Callable

from crate_jax.model import ConfigError

# A rule: whether a value is allowed, and the words that say what is.
Rule = tuple[Callable[[object], bool], str]


def integer(least: int) -> Rule:
    return (lambda value: isinstance(value, int) and not isinstance(value, bool)
            and value >= least), f"an integer >= {least}"


def number(low: float, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Rule:
    def allowed(value) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        above = value > low if low_open else value >= low
        below = high is None or (value < high if high_open else value <= high)
        return above and below

    if high is None:
        return allowed, f"a number {'>' if low_open else '>='} {low:g}"
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return allowed, f"in {interval}"


COUNT = integer(1)
SEED = integer(0)  # numpy's generators refuse negative seeds

def check_rules(config, rules: dict[str, Rule]) -> None:
    for key, (allowed, description) in rules.items():
        value = config
        for part in key.split("."):
            value = value[part]
        if not allowed(value):
            raise ConfigError(f"{key}={value!r} is out of range: it must be {description}")
