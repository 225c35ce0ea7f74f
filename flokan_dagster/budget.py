"""The budget guard: estimate a run's cost and refuse it, spending nothing, when it is too dear.

Before any ``/process`` of a run, the SKUs still to generate are priced with
``/estimate-credits`` (an upper bound) per tier and provider. The run is refused when that
exceeds the workspace's available credits, the run budget, or what is left of the daily budget
(today's UTC spending from the ledger). BYOK calls cost no credits and skip the credit check.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timezone

from flokan_dagster.api import rules
from flokan_dagster.api.client import AsyncFlokanClient
from flokan_dagster.api.errors import FlokanError
from flokan_dagster.api.models import CreditEstimate
from flokan_dagster.batch import SkuOutcome, SkuTask
from flokan_dagster.ledger import CreditLedger


@dataclass(frozen=True)
class BudgetLimits:
    """Spending limits of a run.

    Attributes:
        run_budget_credits: Most credits one run may be estimated to spend.
        daily_budget_credits: Most credits per UTC day, across runs (from the ledger).
    """

    run_budget_credits: int | None = None
    daily_budget_credits: int | None = None


@dataclass
class BudgetDecision:
    """The guard's verdict.

    Attributes:
        refusal: Why the whole run is refused, or None.
        rejected: SKUs whose tier/provider could not even be priced (e.g. BYOK not configured).
        estimated_credits: The run's platform-credit estimate.
    """

    refusal: str | None
    rejected: list[SkuOutcome]
    estimated_credits: int


async def enforce_budget(
    client: AsyncFlokanClient,
    ledger: CreditLedger,
    tasks: list[SkuTask],
    limits: BudgetLimits,
    *,
    asset: str,
    run_id: str | None,
) -> BudgetDecision:
    """Price ``tasks`` (setting each task's ``estimated_credits``) and decide; records refusals.

    Tasks that cannot be priced are removed from ``tasks`` and returned as rejected.
    """
    paying = [task for task in tasks if task.reuse is None]
    combos = sorted({(task.spec.model_tier, task.spec.provider or rules.PLATFORM_PROVIDER) for task in paying})
    answers = await asyncio.gather(*(client.estimate_credits(tier, provider) for tier, provider in combos), return_exceptions=True)
    estimates: dict[tuple[str, str], CreditEstimate] = {}
    rejected: list[SkuOutcome] = []
    errors = {combo: answer for combo, answer in zip(combos, answers, strict=True) if isinstance(answer, BaseException)}
    for combo, answer in zip(combos, answers, strict=True):
        if isinstance(answer, CreditEstimate):
            estimates[combo] = answer
    for task in list(paying):
        combo = (task.spec.model_tier, task.spec.provider or rules.PLATFORM_PROVIDER)
        if combo in errors:
            error = errors[combo]
            if not isinstance(error, FlokanError):
                raise error
            message = f"estimating {combo[0]}/{combo[1]} failed: {error}"
            ledger.record_rejected(asset=asset, sku=task.spec.sku, error=message, run_id=run_id,
                                   prompt=task.spec.prompt, model_tier=combo[0], provider=combo[1],
                                   fingerprint=task.fingerprint)  # fmt: skip
            rejected.append(SkuOutcome(task.spec.sku, "failed", error=message))
            tasks.remove(task)
            paying.remove(task)
        else:
            task.estimated_credits = estimates[combo].estimated_credits
    total = sum(task.estimated_credits or 0 for task in paying)
    refusal = _refusal(total, estimates, ledger, limits)
    if refusal is not None:
        for task in paying:
            ledger.record_rejected(asset=asset, sku=task.spec.sku, error=refusal, run_id=run_id,
                                   prompt=task.spec.prompt, model_tier=task.spec.model_tier,
                                   provider=task.spec.provider or rules.PLATFORM_PROVIDER,
                                   fingerprint=task.fingerprint, estimated_credits=task.estimated_credits)  # fmt: skip
    return BudgetDecision(refusal, rejected, total)


def _refusal(total: int, estimates: dict[tuple[str, str], CreditEstimate], ledger: CreditLedger, limits: BudgetLimits) -> str | None:
    if total <= 0:
        return None  # nothing to pay for, or BYOK only: no credit check
    available = [e.available_credits for (_, provider), e in estimates.items()
                 if provider == rules.PLATFORM_PROVIDER and e.available_credits is not None]  # fmt: skip
    if available and total > min(available):
        return f"budget guard: the run needs up to {total} credits but the workspace has {min(available)} available"
    if limits.run_budget_credits is not None and total > limits.run_budget_credits:
        return f"budget guard: the run needs up to {total} credits, over the run budget of {limits.run_budget_credits}"
    if limits.daily_budget_credits is not None:
        midnight = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        spent = ledger.credits_spent(midnight)
        if spent + total > limits.daily_budget_credits:
            return (
                f"budget guard: today's spending is {spent} credits; the run needs up to {total} more, "
                f"over the daily budget of {limits.daily_budget_credits}"
            )
    return None
