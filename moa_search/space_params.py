"""Search dimensions of a search space: a list of choices, a numeric range, or a bank drawn from a pool.

Each dimension is one Optuna parameter named by its dotted config key ("ffn.bank", "train.lr",
"ffn_per_layer.0.gate"). A dimension suggests a value from an `optuna.Trial` and lists its values for
the grid sampler. It also returns the values that represent it when a space is checked before
training, and its plain form, which is saved with the study and hashed for resume checks.

Banks are always suggested as canonical strings (`activations.bank_to_string`: sorted names joined
by "+"), so a bank is one categorical parameter that every sampler, storage and report reads the
same way. A bank drawn `from` a pool with a size range enumerates every subset of an allowed size as
one categorical choice. The trade-off: TPE then treats "gelu+relu" and "gelu+silu" as unrelated
categories and cannot learn that gelu helps in both, but every sampled bank is valid (no rejected
draws), the grid sampler can enumerate the banks directly, and records need no decoding.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import optuna

from moa_search.errors import ConfigError

# A pool of 13 activations with sizes 1..13 has 8191 subsets; past this, list the banks explicitly.
MAX_BANK_CHOICES = 10_000

RANGE_KEYS = ("low", "high", "log", "step")
BANK_POOL_KEYS = ("from", "size")


def suggest_close(name: str, valid: list[str] | tuple[str, ...]) -> str:
    """Return " (did you mean 'X'?)" for the closest valid name, or "" when none is close."""
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Choices:
    """A categorical dimension: one of the listed scalar values (str, number, bool or null)."""

    key: str
    choices: tuple[Any, ...]

    def suggest(self, trial: optuna.Trial) -> Any:
        return trial.suggest_categorical(self.key, list(self.choices))

    def grid_values(self) -> list[Any]:
        return list(self.choices)

    def representatives(self) -> list[Any]:
        return list(self.choices)

    def central(self) -> Any:
        return self.choices[0]

    def to_dict(self) -> dict[str, Any]:
        return {"choices": list(self.choices)}

    def describe(self) -> str:
        return "one of " + ", ".join("null" if value is None else str(value) for value in self.choices)


@dataclass(frozen=True)
class Range:
    """A numeric dimension from low to high (both included), optionally on a log scale or in steps.

    integer: True for settings of integer type (suggest_int), False for float settings (suggest_float).
    """

    key: str
    low: float
    high: float
    log: bool = False
    step: float | None = None
    integer: bool = False

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def grid_values(self) -> list[Any] | None:
        """Return every value of the range, or None when it is continuous (a float range without step)."""
        if self.integer:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            return None
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        # Rounding keeps 0.1 + 2 * 0.1 from printing as 0.30000000000000004 in grids and reports.
        return [round(self.low + index * self.step, 12) for index in range(count)]

    def representatives(self) -> list[Any]:
        return [self._cast(self.low), self._cast(self.high)] if self.low != self.high else [self._cast(self.low)]

    def central(self) -> Any:
        """Return the middle of the range (geometric middle on a log scale), snapped to the step."""
        middle = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        if self.step is not None or self.integer:
            step = self.step or 1
            middle = self.low + round((middle - self.low) / step) * step
        return self._cast(middle)

    def _cast(self, value: float) -> Any:
        return int(round(value)) if self.integer else float(value)

    def to_dict(self) -> dict[str, Any]:
        return {"low": self._cast(self.low), "high": self._cast(self.high), "log": self.log,
                "step": None if self.step is None else self._cast(self.step), "integer": self.integer}

    def describe(self) -> str:
        text = f"{self._cast(self.low)} .. {self._cast(self.high)}"
        if self.step is not None:
            text += f" step {self._cast(self.step)}"
        if self.log:
            text += " (log)"
        if self.integer:
            text += " integer"
        return text


@dataclass(frozen=True)
class BankChoices:
    """A bank dimension: one of the listed banks, each stored as its canonical string."""

    key: str
    banks: tuple[str, ...]  # canonical strings, in the order written
    pool: tuple[str, ...] = ()  # set when the banks were enumerated from a pool
    size_low: int = 0
    size_high: int = 0

    def suggest(self, trial: optuna.Trial) -> str:
        return trial.suggest_categorical(self.key, list(self.banks))

    def grid_values(self) -> list[str]:
        return list(self.banks)

    def representatives(self) -> list[str]:
        """Return one bank of each size: rules between the bank and other settings depend on its size."""
        by_size: dict[int, str] = {}
        for bank in self.banks:
            by_size.setdefault(len(bank.split("+")), bank)
        return list(by_size.values())

    def central(self) -> str:
        return self.banks[0]

    def sizes(self) -> set[int]:
        return {len(bank.split("+")) for bank in self.banks}

    def to_dict(self) -> dict[str, Any]:
        if self.pool:
            return {"from": list(self.pool), "size": {"low": self.size_low, "high": self.size_high},
                    "banks": len(self.banks)}
        return {"choices": list(self.banks)}

    def describe(self) -> str:
        if self.pool:
            return f"subsets of {', '.join(self.pool)} with {self.size_low}..{self.size_high} activations ({len(self.banks)} banks)"
        return "one of " + ", ".join(self.banks)


Dimension = Choices | Range | BankChoices


def is_dimension_spec(value: Any) -> bool:
    """True when a setting's value is a search dimension: a mapping (no config setting is a mapping)."""
    return isinstance(value, dict)


def parse_dimension(key: str, spec: dict, annotation: str) -> Dimension:
    """Build the dimension written at `key` from its YAML mapping; `annotation` is the setting's type."""
    if key.endswith(".bank"):
        return _parse_bank(key, spec)
    if "choices" in spec:
        _reject_extra_keys(key, spec, ("choices",), "a choices dimension takes only 'choices'")
        return _parse_choices(key, spec["choices"])
    if "low" in spec or "high" in spec:
        _reject_extra_keys(key, spec, RANGE_KEYS, "a range takes low, high, log and step")
        return _parse_range(key, spec, annotation)
    valid = ["choices", *RANGE_KEYS]
    unknown = ", ".join(f"'{name}'{suggest_close(name, valid)}" for name in spec) or "nothing"
    raise ConfigError(
        f"{key}: a search dimension needs 'choices' (a list) or 'low' and 'high' (a range), got {unknown}; "
        "write a fixed value without braces"
    )


def _reject_extra_keys(key: str, spec: dict, allowed: tuple[str, ...], rule: str) -> None:
    for name in spec:
        if name not in allowed:
            raise ConfigError(f"{key}.{name}: unknown key{suggest_close(str(name), allowed)}; {rule}")


def _parse_choices(key: str, raw: Any) -> Choices:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{key}.choices: must be a non-empty list of values, got {raw!r}")
    seen: list[Any] = []
    for value in raw:
        if isinstance(value, (list, dict)):
            raise ConfigError(
                f"{key}.choices: each choice must be a single value (text, number, true/false or null), got {value!r}"
            )
        if any(value == other and type(value) is type(other) for other in seen):
            raise ConfigError(f"{key}.choices: {value!r} is listed twice; list each choice once")
        seen.append(value)
    return Choices(key, tuple(raw))


def _parse_range(key: str, spec: dict, annotation: str) -> Range:
    base = annotation.replace(" | None", "")
    if base not in ("int", "float"):
        raise ConfigError(f"{key}: a range needs a numeric setting, but {key} takes {base}; use {{choices: [...]}}")
    for name in ("low", "high"):
        if name not in spec:
            raise ConfigError(f"{key}: a range needs both low and high, '{name}' is missing")
        if not _is_number(spec[name]) or not math.isfinite(spec[name]):
            raise ConfigError(f"{key}.{name}: must be a finite number, got {spec[name]!r}; write numbers unquoted, e.g. 1e-3")
    low, high = spec["low"], spec["high"]
    log = spec.get("log", False)
    step = spec.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"{key}.log: must be true or false, got {log!r}")
    if step is not None and (not _is_number(step) or not step > 0):
        raise ConfigError(f"{key}.step: must be a number > 0 or null, got {step!r}")
    integer = base == "int"
    if integer and not (_is_int(low) and _is_int(high) and (step is None or _is_int(step))):
        raise ConfigError(
            f"{key}: {key} is an integer setting, so low, high and step must be integers; got low {low!r}, "
            f"high {high!r}, step {step!r}"
        )
    if low > high:
        raise ConfigError(f"{key}: low must be <= high, got low {low} and high {high}; swap them")
    if log and low <= 0:
        raise ConfigError(f"{key}.low: a log range needs low > 0, got {low}; raise low or drop log")
    if log and step is not None and not (integer and step == 1):
        raise ConfigError(f"{key}: a log range cannot have a step (Optuna samples log ranges continuously); drop step or log")
    return Range(key, float(low), float(high), log=log, step=None if step is None else float(step), integer=integer)


def _parse_bank(key: str, spec: dict) -> BankChoices:
    from moa_search.activations import bank_to_string, check_bank

    if "choices" in spec:
        _reject_extra_keys(key, spec, ("choices",), "a bank dimension takes 'choices' or 'from' and 'size'")
        raw = spec["choices"]
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"{key}.choices: must be a non-empty list of banks, e.g. [[relu, gelu], [silu]], got {raw!r}")
        banks: list[str] = []
        for index, bank in enumerate(raw):
            names = _bank_names(f"{key}.choices.{index}", bank)
            check_bank(names, key=f"{key}.choices.{index}")
            text = bank_to_string(names)
            if text in banks:
                raise ConfigError(f"{key}.choices.{index}: bank {text} is listed twice (order inside a bank does not matter)")
            banks.append(text)
        return BankChoices(key, tuple(banks))
    if "from" in spec:
        _reject_extra_keys(key, spec, BANK_POOL_KEYS, "a bank drawn from a pool takes 'from' and 'size'")
        return _parse_bank_pool(key, spec)
    found = ", ".join(f"'{name}'{suggest_close(str(name), ['choices', *BANK_POOL_KEYS])}" for name in spec) or "nothing"
    raise ConfigError(
        f"{key}: a bank dimension needs 'choices' (a list of banks) or 'from' (a list of activations) "
        f"with an optional 'size', got {found}"
    )


def _bank_names(key: str, bank: Any) -> tuple[str, ...]:
    """Read one bank written as a list of names or as a canonical string such as "gelu+relu"."""
    if isinstance(bank, str):
        return tuple(bank.split("+"))
    if isinstance(bank, list) and bank and all(isinstance(name, str) for name in bank):
        return tuple(bank)
    raise ConfigError(f"{key}: a bank must be a non-empty list of activation names, got {bank!r}")


def _parse_bank_pool(key: str, spec: dict) -> BankChoices:
    from moa_search.activations import bank_to_string, check_bank

    pool = _bank_names(f"{key}.from", spec["from"])
    check_bank(pool, key=f"{key}.from")
    size = spec.get("size", {"low": 1, "high": len(pool)})
    if _is_int(size):
        size = {"low": size, "high": size}
    if not isinstance(size, dict):
        raise ConfigError(f"{key}.size: must be a number of activations or {{low: 1, high: 3}}, got {size!r}")
    _reject_extra_keys(f"{key}.size", size, ("low", "high"), "a bank size takes low and high")
    low, high = size.get("low", 1), size.get("high", len(pool))
    if not (_is_int(low) and _is_int(high)):
        raise ConfigError(f"{key}.size: low and high must be integers, got low {low!r} and high {high!r}")
    if not 1 <= low <= high <= len(pool):
        raise ConfigError(
            f"{key}.size: must satisfy 1 <= low <= high <= {len(pool)} (the pool size), got low {low} and high {high}"
        )
    count = sum(math.comb(len(pool), k) for k in range(low, high + 1))
    if count > MAX_BANK_CHOICES:
        raise ConfigError(
            f"{key}: the pool gives {count} banks, more than {MAX_BANK_CHOICES}; narrow the size range or "
            "list the banks under 'choices'"
        )
    banks = [bank_to_string(subset) for k in range(low, high + 1) for subset in combinations(pool, k)]
    return BankChoices(key, tuple(banks), pool=tuple(pool), size_low=low, size_high=high)

