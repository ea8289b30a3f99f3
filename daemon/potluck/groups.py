"""Parameter groups (git-theta's word): manifest rules that pick tensors by name and set, per group,
the merge strategy, a freeze, and limits on the density and rank of updates (pure; no I/O).

A rule is one line of text, the form ``potluck init --group`` takes and the manifest keeps::

    PATTERN:OPTION,OPTION,...     e.g.  transformer.h.*.attn.*:strategy=ties,max_rank=8
                                        transformer.wte.*:freeze

``PATTERN`` is a glob over tensor names (:func:`fnmatch.fnmatchcase`: ``*`` matches any run of
characters, dots included; ``?`` one; ``[...]`` a set; case-sensitive; no ``:``). Options: ``strategy=NAME``
(a merge strategy, see potluck.merge; with the manifest's ``strategy_args``), ``freeze`` (an update
that touches the group is rejected ``frozen_tensor``), ``max_density=X`` (0 < X <= 1: at most that
fraction of a tensor's entries in a sparse entry, else ``density_exceeded``), ``max_rank=N``
(N >= 1: at most that rank in a low-rank entry, else ``rank_exceeded``). A tensor belongs to the
**first** rule whose pattern matches it; tensors no rule matches follow the manifest's own fields.
The canonical text of a rule (what is signed) lists its options in the order above.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

__all__ = ["GroupError", "GroupRule", "GroupRules", "parse_rule"]

MAX_RULES = 256
_STRATEGY = re.compile(r"[A-Za-z_][\w.:]*")


class GroupError(ValueError):
    """A group rule that does not parse (the message is one line)."""


@dataclass(frozen=True)
class GroupRule:
    pattern: str
    strategy: str | None = None
    freeze: bool = False
    max_density: float | None = None
    max_rank: int | None = None

    def matches(self, name: str) -> bool:
        return fnmatchcase(name, self.pattern)

    def text(self) -> str:
        """The canonical form: ``parse_rule(rule.text()) == rule``."""
        opts = [f"strategy={self.strategy}"] if self.strategy else []
        opts += ["freeze"] if self.freeze else []
        opts += [f"max_density={self.max_density!r}"] if self.max_density is not None else []
        opts += [f"max_rank={self.max_rank}"] if self.max_rank is not None else []
        return f"{self.pattern}:{','.join(opts)}"


def parse_rule(text: str) -> GroupRule:
    """``PATTERN:OPTION,...`` -> :class:`GroupRule`; :class:`GroupError` says what is wrong, in one line."""
    if not isinstance(text, str):
        raise GroupError(f"a group rule is a string, got {type(text).__name__}")
    pattern, sep, options = text.partition(":")  # a pattern has no colon; a strategy spec may
    if not sep or not pattern:
        raise GroupError(
            f"group {text!r}: expected PATTERN:OPTION[,OPTION...], e.g. 'transformer.h.*:freeze'"
        )
    if any(c.isspace() for c in pattern) or len(pattern) > 512:
        raise GroupError(f"group {text!r}: the pattern has whitespace or is over 512 characters")
    fields: dict[str, object] = {}
    for option in options.split(","):
        key, eq, value = (part.strip() for part in option.partition("="))
        if key in fields:
            raise GroupError(f"group {text!r}: option {key!r} given twice")
        if key == "freeze" and not eq:
            fields[key] = True
        elif key == "strategy" and _STRATEGY.fullmatch(value):
            fields[key] = value
        elif key == "max_density":
            fields[key] = _density(value, text)
        elif key == "max_rank":
            if not value.isdigit() or not 1 <= int(value) <= 1 << 20:
                raise GroupError(f"group {text!r}: max_rank must be an integer >= 1, got {value!r}")
            fields[key] = int(value)
        else:
            raise GroupError(
                f"group {text!r}: bad option {option.strip()!r}; options are strategy=NAME, freeze, "
                "max_density=X, max_rank=N"
            )
    return GroupRule(pattern, **fields)  # type: ignore[arg-type]


def _density(value: str, text: str) -> float:
    try:
        x = float(value)
    except ValueError:
        x = math.nan
    if not 0 < x <= 1:  # NaN fails too
        raise GroupError(f"group {text!r}: max_density must be a number in (0, 1], got {value!r}")
    return x


class GroupRules:
    """A manifest's rules in order; every question is asked of a tensor name."""

    def __init__(self, rules: Iterable[str | GroupRule] = ()) -> None:
        self.rules = tuple(r if isinstance(r, GroupRule) else parse_rule(r) for r in rules)
        if len(self.rules) > MAX_RULES:
            raise GroupError(f"{len(self.rules)} group rules > {MAX_RULES}")

    def __bool__(self) -> bool:
        return bool(self.rules)

    def rule_for(self, name: str) -> GroupRule | None:
        """The first rule whose pattern matches ``name`` (None: the manifest's own fields apply)."""
        return next((r for r in self.rules if r.matches(name)), None)

    def frozen(self, names: Iterable[str]) -> frozenset[str]:
        return frozenset(n for n in names if (r := self.rule_for(n)) is not None and r.freeze)

    def limits(self, names: Iterable[str], attr: str) -> dict[str, float]:
        """Tensor name -> the group's ``max_density`` or ``max_rank`` where its rule sets one."""
        return {n: v for n in names if (v := getattr(self.rule_for(n), attr, None)) is not None}

    def strategies(self, names: Iterable[str], default: str) -> dict[str, str]:
        """Tensor name -> its merge strategy (the rule's, else ``default``)."""
        return {n: (r.strategy if (r := self.rule_for(n)) and r.strategy else default) for n in names}

    def split_strategies(self, default: str) -> bool:
        """Whether some rule names a strategy other than ``default`` (a run's merge then runs per group)."""
        return any(r.strategy not in (None, default) for r in self.rules)

    @staticmethod
    def canonical(rules: Iterable[str]) -> tuple[str, ...]:
        """The rules as the manifest signs them (each in canonical text; order kept: it decides)."""
        return tuple(parse_rule(r).text() for r in rules)
