"""Fault injection: the ``X-Emulator-Fault`` header, admin rules and the seeded FaultPlan.

All three produce :class:`Fault` values; :class:`FaultSet` folds those that apply to one request.

Example:
    >>> [f.kind for f in parse_fault_header("latency;ms=1500, drop_after_complete")]
    ['latency', 'drop_after_complete']
    >>> parse_fault_header("latency;ms=1500")[0].params
    {'ms': 1500}
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from flokan_dagster.emulator.config import FaultPlan

FAULT_KINDS: tuple[str, ...] = (
    "latency",
    "provider_error",
    "http_error",
    "rate_limit",
    "drop_after_complete",
    "malformed",
    "safety",
    # Clocks, late acceptance and optional fields (flokan-api.md Part B):
    "late_accept",
    "answer_delay",
    "omit_fields",
)
MALFORMED_VARIANTS: tuple[str, ...] = ("non_json", "missing_fields", "wrong_types", "huge", "truncated")
HTTP_ERROR_STATUSES: tuple[int, ...] = (500, 502, 503, 504)
#: Job row fields Part B lets a real row omit (``omit_fields`` may drop any of them).
OPTIONAL_JOB_FIELDS: tuple[str, ...] = (
    "provider", "provider_used", "image_id", "image_url", "style_id", "character_id", "result_url",
    "result_image_id", "processing_ms", "error", "completed_at",
)  # fmt: skip


@dataclass(frozen=True)
class Fault:
    """One fault to inject: a kind from :data:`FAULT_KINDS` and its checked parameters."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)


def make_fault(kind: str, params: dict[str, Any] | None = None) -> Fault:
    """Check a fault's kind and parameters, fill defaults, and return it; else ValueError."""
    params = dict(params or {})
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}")

    def number(name: str, default: int) -> int:
        value = params.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"fault {kind}: {name} must be a non-negative integer, got {value!r}")
        return value

    if kind == "latency":
        return Fault(kind, {"ms": number("ms", 1000)})
    if kind == "http_error":
        status = number("status", 503)
        if status not in HTTP_ERROR_STATUSES:
            raise ValueError(f"fault http_error: status must be one of {HTTP_ERROR_STATUSES}, got {status}")
        return Fault(kind, {"status": status})
    if kind == "rate_limit":
        return Fault(kind, {"retry_after": number("retry_after", 1)})
    if kind == "late_accept":
        status = number("status", 502)
        if status not in HTTP_ERROR_STATUSES:
            raise ValueError(f"fault late_accept: status must be one of {HTTP_ERROR_STATUSES}, got {status}")
        return Fault(kind, {"delay_ms": number("delay_ms", 4000), "status": status})
    if kind == "answer_delay":
        return Fault(kind, {"ms": number("ms", 1000)})
    if kind == "omit_fields":
        raw = params.get("fields", "result_image_id")
        names = raw.split("|") if isinstance(raw, str) else raw
        if not isinstance(names, list) or not names or any(n not in OPTIONAL_JOB_FIELDS for n in names):
            raise ValueError(
                f"fault omit_fields: fields must be optional job fields ({', '.join(OPTIONAL_JOB_FIELDS)}) "
                f"joined by '|', got {raw!r}"
            )
        return Fault(kind, {"fields": list(names)})
    if kind == "malformed":
        variant = params.get("variant", "non_json")
        if variant not in MALFORMED_VARIANTS:
            raise ValueError(f"fault malformed: variant must be one of {', '.join(MALFORMED_VARIANTS)}, got {variant!r}")
        return Fault(kind, {"variant": variant, "bytes": number("bytes", 8 * 1024 * 1024)})
    return Fault(kind)


def parse_fault_header(value: str) -> list[Fault]:
    """Parse ``X-Emulator-Fault``: comma-separated kinds, each with ``;key=value`` parameters."""
    faults = []
    for item in value.split(","):
        if not item.strip():
            continue
        kind, *pairs = (part.strip() for part in item.split(";"))
        params: dict[str, Any] = {}
        for pair in pairs:
            key, sep, raw = pair.partition("=")
            if not sep:
                raise ValueError(f"fault {kind}: parameter {pair!r} must be key=value")
            params[key.strip()] = int(raw) if raw.strip().isdigit() else raw.strip()
        faults.append(make_fault(kind, params))
    return faults


class FaultRule(BaseModel):
    """An admin fault rule: inject ``kind`` on ``route`` (optionally only when the prompt
    contains ``prompt_contains``), ``times`` times (None = always), after letting the first
    ``skip`` matching requests through (e.g. the second of two identical requests only)."""

    kind: str
    route: str = "POST /process"
    prompt_contains: str | None = None
    times: int | None = Field(None, ge=1)
    skip: int = Field(0, ge=0)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}")
        return kind

    @model_validator(mode="after")
    def _valid_params(self) -> FaultRule:
        self.params = make_fault(self.kind, self.params).params
        return self


@dataclass
class FaultSet:
    """The faults that apply to one request, folded into what the handler needs to know."""

    latency_ms: int | None = None
    provider_error: bool = False
    http_error: int | None = None
    rate_limit_retry_after: int | None = None
    drop_after_complete: bool = False
    malformed: str | None = None
    malformed_bytes: int = 0
    safety: bool = False
    late_accept_ms: int | None = None
    late_accept_status: int = 502
    answer_delay_ms: int | None = None
    omit_fields: tuple[str, ...] = ()

    def add(self, fault: Fault) -> None:
        """Fold one more fault in (the longest latency wins; the last status/variant wins)."""
        if fault.kind == "latency":
            self.latency_ms = max(self.latency_ms or 0, fault.params["ms"])
        elif fault.kind == "provider_error":
            self.provider_error = True
        elif fault.kind == "http_error":
            self.http_error = fault.params["status"]
        elif fault.kind == "rate_limit":
            self.rate_limit_retry_after = fault.params["retry_after"]
        elif fault.kind == "drop_after_complete":
            self.drop_after_complete = True
        elif fault.kind == "malformed":
            self.malformed = fault.params["variant"]
            self.malformed_bytes = fault.params["bytes"]
        elif fault.kind == "safety":
            self.safety = True
        elif fault.kind == "late_accept":
            self.late_accept_ms, self.late_accept_status = fault.params["delay_ms"], fault.params["status"]
        elif fault.kind == "answer_delay":
            self.answer_delay_ms = max(self.answer_delay_ms or 0, fault.params["ms"])
        elif fault.kind == "omit_fields":
            self.omit_fields = tuple(dict.fromkeys((*self.omit_fields, *fault.params["fields"])))


class FaultBook:
    """The server's fault rules and seeded plan, shared by every request (thread-safe).

    Example:
        >>> book = FaultBook(FaultPlan(seed=3, provider_error_rate=1.0))
        >>> [f.kind for f in book.planned({"prompt": "x"})]
        ['provider_error']
    """

    def __init__(self, plan: FaultPlan) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._plan = plan
        self._seen: Counter[str] = Counter()

    @property
    def plan(self) -> FaultPlan:
        """The current seeded plan."""
        return self._plan

    def set_plan(self, plan: FaultPlan) -> None:
        """Replace the plan and restart its occurrence counting (so a run is reproducible)."""
        with self._lock:
            self._plan = plan
            self._seen.clear()

    def add_rules(self, rules: list[FaultRule]) -> None:
        """Append rules; they are matched in the order they were added."""
        with self._lock:
            self._rules.extend(rules)

    def clear_rules(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[FaultRule]:
        """A snapshot of the active rules (with their remaining ``times``)."""
        with self._lock:
            return [rule.model_copy() for rule in self._rules]

    def matching(self, route: str, prompt: str | None) -> list[Fault]:
        """Return the faults of every rule that matches, consuming one of each rule's ``times``."""
        found = []
        with self._lock:
            for rule in list(self._rules):
                if rule.route != route:
                    continue
                if rule.prompt_contains is not None and (prompt is None or rule.prompt_contains not in prompt):
                    continue
                if rule.skip:
                    rule.skip -= 1
                    continue
                found.append(Fault(rule.kind, dict(rule.params)))
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times == 0:
                        self._rules.remove(rule)
        return found

    def planned(self, fields: dict[str, Any]) -> list[Fault]:
        """Decide the plan's faults for one ``/process`` request from a hash of
        (seed, request fields, nth occurrence of those fields)."""
        plan = self._plan
        rates = (plan.rate_limit_rate, plan.provider_error_rate, plan.slow_rate, plan.drop_after_complete_rate)
        if not any(rates):
            return []
        identity = json.dumps(fields, sort_keys=True, default=str)
        with self._lock:
            nth = self._seen[identity]
            self._seen[identity] += 1
        digest = hashlib.sha256(f"{plan.seed}|{identity}|{nth}".encode()).digest()
        draws = [int.from_bytes(digest[i * 4 : i * 4 + 4], "big") / 2**32 for i in range(4)]
        if draws[0] < plan.rate_limit_rate:
            return [Fault("rate_limit", {"retry_after": 1})]
        if draws[1] < plan.provider_error_rate:
            return [Fault("provider_error")]
        faults = []
        if draws[2] < plan.slow_rate:
            faults.append(Fault("latency", {"ms": plan.slow_ms}))
        if draws[3] < plan.drop_after_complete_rate:
            faults.append(Fault("drop_after_complete"))
        return faults
