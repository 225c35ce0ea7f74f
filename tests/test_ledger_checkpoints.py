"""A ledger file keeps commits in DuckDB's WAL between checkpoints (``ledger/checkpoints.py``).

What must hold: a commit that only the WAL holds is read by every later open, in another process
and after the writer was SIGKILLed; the WAL never stays past its limit after a write, so readers'
replay stays bounded while the checkpoint (which rewrites the indexes) is paid rarely; and a small
ledger, whose checkpoint is cheap, still checkpoints at every close.

The limit grows with the file (16 MiB before any WAL is kept); tests that need a kept WAL lower
``WAL_FILE_RATIO`` rather than write a large ledger.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flokan_dagster.ledger import CreditLedger, checkpoints
from flokan_dagster.ledger.checkpoints import wal_bytes, wal_limit

PROJECT = Path(__file__).resolve().parent.parent


def test_a_commit_only_in_the_wal_survives_a_sigkilled_writer_and_is_read_by_another_process(tmp_path: Path) -> None:
    database = tmp_path / "ledger.duckdb"
    CreditLedger(str(database)).begin_attempt(asset="images", sku="SKU-0", prompt="p", model_tier="pro")
    writer = textwrap.dedent(
        """
        import os, signal, sys
        from flokan_dagster.ledger import CreditLedger, checkpoints
        checkpoints.WAL_FILE_RATIO = 1  # as large a ledger would: keep up to WAL_MAX_BYTES of WAL
        ledger = CreditLedger(sys.argv[1])
        aid = ledger.begin_attempt(asset="images", sku="SKU-1", prompt="p", model_tier="pro", estimated_credits=50)
        ledger.finish_attempt(aid, status="completed", job_id="job-1", credits_consumed=50)
        print(aid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", writer, str(database)], capture_output=True, text=True, cwd=PROJECT, timeout=300
    )
    assert done.returncode == -9, done.stderr
    attempt_id = done.stdout.strip()
    assert wal_bytes(str(database)) > 0, "the writer's commits should still be in the WAL (no checkpoint was due)"
    reader = textwrap.dedent(
        """
        import sys
        from flokan_dagster.ledger import CreditLedger
        record = CreditLedger(sys.argv[1]).get_attempt(sys.argv[2])
        print(record.status, record.job_id, record.credits_consumed)
        """
    )
    read = subprocess.run(
        [sys.executable, "-c", reader, str(database), attempt_id], capture_output=True, text=True, cwd=PROJECT, timeout=300
    )
    assert read.returncode == 0, read.stderr
    assert read.stdout.split() == ["completed", "job-1", "50"]


def test_a_small_ledger_checkpoints_at_every_close(tmp_path: Path) -> None:
    database = tmp_path / "ledger.duckdb"
    ledger = CreditLedger(str(database))
    for i in range(3):
        aid = ledger.begin_attempt(asset="images", sku=f"SKU-{i}", prompt="p", model_tier="pro")
        assert wal_bytes(str(database)) == 0
        ledger.finish_attempt(aid, status="completed", job_id=f"job-{i}", credits_consumed=50)
        assert wal_bytes(str(database)) == 0


def test_the_wal_is_checkpointed_once_past_its_limit_and_never_left_beyond_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "WAL_FILE_RATIO", 1)  # the limit of a large ledger: WAL_MAX_BYTES
    database = tmp_path / "ledger.duckdb"
    ledger = CreditLedger(str(database))
    sizes = []
    for i in range(24):
        aid = ledger.begin_attempt(asset="images", sku=f"SKU-{i}", prompt="p" * 200, model_tier="pro")
        sizes.append(wal_bytes(str(database)))
        ledger.finish_attempt(aid, status="completed", job_id=f"job-{i}", credits_consumed=50)
        sizes.append(wal_bytes(str(database)))
        assert max(sizes[-2:]) <= wal_limit(str(database)), f"after attempt {i} the WAL held more than its limit: {sizes}"
    assert any(later < earlier for earlier, later in itertools.pairwise(sizes)), f"no checkpoint: {sizes}"
    assert any(size > 0 for size in sizes), f"every write checkpointed: {sizes}"
    fresh = CreditLedger(str(database))
    assert sorted(r.job_id or "" for r in fresh.attempts_for("images")) == sorted(f"job-{i}" for i in range(24))
