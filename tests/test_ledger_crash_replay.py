"""Events written by concurrent processes that crash at any point converge to one ledger.

Each example runs three writer processes against one DuckDB file at once. Their operations
(begin, finish, settle) are drawn at random, and share job ids across processes, so one job may
be answered to one attempt and adopted by another. One process may die (``os._exit``, as a
SIGKILL would leave it) right after spooling an event, in the middle of a merge transaction, or
after a merge committed but before its spool files were deleted. Afterwards one survivor merges
what is left, and:

- every event any process reported durable (its spool file written) is in the journal;
- the ``attempts`` table equals a fresh fold of the journal replayed in a random order and
  random batches (the rows depend only on the set of events);
- no job id is held by two rows, and a job answered directly to an attempt is held by such an
  attempt, never by an adoption.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flokan_dagster.ledger import CreditLedger
from flokan_dagster.ledger.records import COLUMNS, LedgerEvent
from tests.test_ledger_replay import ledger_rows, replay

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = 3
# A direct answer's job is its attempt's own (the server makes a new job per request); an
# adoption may take any of them, so one job can be answered to one attempt and adopted by another.
JOBS = [f"job-p{w}-a{i}" for w in range(PROCESSES) for i in range(3)]

_CHILD = r"""
import json, os, sys
from flokan_dagster.ledger import CreditLedger, journal, spool as spool_module
database, worker, plan = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
crash, seen = plan["crash"], {"n": 0}

def maybe_crash(stage):
    if crash is not None and crash[0] == stage:
        seen["n"] += 1
        if seen["n"] == crash[1]:
            os._exit(9)

put, remove, insert_rows = spool_module.Spool.put, spool_module.Spool.remove, journal.insert_rows
def reporting_put(self, event):
    path = put(self, event)
    print(json.dumps({"event_id": event.event_id}), flush=True)  # durable from here on
    maybe_crash("after_put")
    return path
def crashing_remove(self, paths):
    maybe_crash("after_commit")
    return remove(self, paths)
def crashing_insert(conn, table, rows):
    maybe_crash("mid_merge")
    return insert_rows(conn, table, rows)
spool_module.Spool.put, spool_module.Spool.remove, journal.insert_rows = reporting_put, crashing_remove, crashing_insert

ledger = CreditLedger(database, lock_timeout_s=0.2)
with_job = set()  # as in the batch: an attempt gets one job, its own answer's or an adopted one
for op in plan["ops"]:
    attempt = f"{worker}-a{op[1]}"
    if op[0] == "begin":
        ledger.begin_attempt(asset="images", sku=attempt, prompt="p", model_tier="pro", fingerprint="fp",
                             estimated_credits=50, attempt_id=attempt)
    elif op[0] == "finish":
        job = f"job-{attempt}" if op[3] and attempt not in with_job else None  # the server's answer: a new job
        ledger.finish_attempt(attempt, status=op[2], job_id=job, credits_consumed=op[4])
        with_job.update([attempt] if job else [])
    elif attempt not in with_job:  # only an attempt whose answer was not seen is settled
        try:
            ledger.settle_attempt(attempt, {"job_id": op[2], "status": op[3], "credits_consumed": op[4]})
            with_job.add(attempt)
        except ValueError:
            pass  # the job is already another attempt's, as far as this process can see
ledger.flush_spool()
"""

operation = st.one_of(
    st.tuples(st.just("begin"), st.integers(0, 2)),
    st.tuples(st.just("finish"), st.integers(0, 2), st.sampled_from(["completed", "failed", "unknown"]),
              st.booleans(), st.integers(0, 60)),
    st.tuples(st.just("settle"), st.integers(0, 2), st.sampled_from(JOBS),
              st.sampled_from(["completed", "failed", "processing"]), st.integers(0, 60)),
)
crash_point = st.none() | st.tuples(st.sampled_from(["after_put", "mid_merge", "after_commit"]), st.integers(1, 3))


def journal_events(conn: duckdb.DuckDBPyConnection) -> list[LedgerEvent]:
    return [LedgerEvent.from_json(r[0]) for r in conn.execute("SELECT payload FROM attempt_events").fetchall()]


@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    plans=st.lists(st.lists(operation, min_size=1, max_size=8), min_size=PROCESSES, max_size=PROCESSES),
    crash=crash_point,
    crashing=st.integers(0, PROCESSES - 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_concurrent_crashing_writers_converge_on_the_fold_of_every_durable_event(
    plans: list[list[tuple[Any, ...]]], crash: tuple[str, int] | None, crashing: int, seed: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        database = str(Path(tmp) / "ledger.duckdb")
        CreditLedger(database).flush_spool()
        children = [
            subprocess.Popen(
                [sys.executable, "-c", _CHILD, database, f"p{w}",
                 json.dumps({"ops": ops, "crash": list(crash) if crash and w == crashing else None})],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            for w, ops in enumerate(plans)
        ]
        outputs = [child.communicate(timeout=300) for child in children]
        for w, (child, (_, err)) in enumerate(zip(children, outputs, strict=True)):
            assert child.returncode in ((0, 9) if crash and w == crashing else (0,)), err
        durable = {json.loads(line)["event_id"] for out, _ in outputs for line in out.splitlines() if line.startswith("{")}

        survivor = CreditLedger(database)
        assert survivor.flush_spool() == 0
        with duckdb.connect(database, read_only=True) as conn:
            events = journal_events(conn)
            stored = ledger_rows(conn)
        assert durable <= {e.event_id for e in events}, "an event reported durable is missing"

        assert ledger_rows(replay(events, random.Random(seed), max_batch=5)) == stored

        held = [(r[0], r[COLUMNS.index("job_id")]) for r in stored if r[COLUMNS.index("job_id")] is not None]
        assert len({job for _, job in held}) == len(held), f"a job is held by two rows: {held}"
        holder = dict((job, attempt) for attempt, job in held)
        for event in events:
            job = event.fields.get("job_id")
            if event.kind == "finish" and job is not None:
                owner = holder.get(job)
                assert owner is not None and any(
                    e.kind == "finish" and e.attempt_id == owner and e.fields.get("job_id") == job for e in events
                ), f"job {job} answered directly to {event.attempt_id} is held by {owner}"
