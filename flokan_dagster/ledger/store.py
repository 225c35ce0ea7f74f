"""``CreditLedger``: write-ahead attempt records and the queries Dagster code needs.

Writes never wait forever and are never dropped. Each write is first made durable as one event
file in the spool, then merged into DuckDB over a short-lived read-write connection, retrying a
locked file for ``lock_timeout_s``. Every open of the file (read-write to merge, read-only to
read) happens under the ledger's cross-process lock (``locking``): DuckDB alone does not keep two
processes from using the file at once (issue 16). If the lock does not come free (another run, the sensor, an
analyst's notebook), the event stays in the spool and is merged by the next write that gets the
lock, or by ``flush_spool()``. Reads open read-only and also see events still in the spool, so a
spooled completed attempt is already reusable (never pay twice for a locked file).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import duckdb

from flokan_dagster.ledger import claims as claim_rows
from flokan_dagster.ledger.backend import serialize_writers, uses_postgres
from flokan_dagster.ledger.claims import Claim, ClaimOutcome, FileClaims, Judge, ProcessIdentity
from flokan_dagster.ledger.compaction import DUE_FRACTION, Compaction, Layout, batch_read_whole, compact_if_due
from flokan_dagster.ledger.connection import (
    LedgerLockedError,
    database_file,
    describe,
    is_remote,
    locked_connection,
    process_lock,
    release,
    spool_counter,
)
from flokan_dagster.ledger.journal import JSON_TEXTS, apply_events, fold_with_stored, insert_rows, json_texts
from flokan_dagster.ledger.locking import ledger_file_lock
from flokan_dagster.ledger.records import (
    COLUMNS,
    DESCRIPTION_FIELDS,
    AttemptRecord,
    LedgerEvent,
    external_attempt_id,
    job_row_fields,
    to_utc_naive,
    utc_now,
)
from flokan_dagster.ledger.schema import ensure_schema
from flokan_dagster.ledger.spool import QuarantinedFile, Spool
from flokan_dagster.sql_lists import UNNEST_TEXT, text_list

logger = logging.getLogger(__name__)

T = TypeVar("T")

_EVENT_ID_NAMESPACE: Final = uuid.UUID("0f3b8a6e-2d5c-4b1e-8c7a-93e1d4f0b2a7")
# What settling adopts from a job row; the request fields stay as Dagster sent them.
_SETTLE_FIELDS: Final = (
    "job_id",
    "job_status",
    "status",
    "provider_used",
    "credits_consumed",
    "processing_ms",
    "result_url",
    "result_image_id",
    "error",
    "job_created_at",
    "completed_at",
)
_SELECT_COLUMNS: Final = ", ".join(COLUMNS)
# Identities of attempts this ledger object began, kept for their later events (a batch of many
# thousand SKUs fits; the oldest are dropped first and then read back from the ledger if needed).
_IDENTITY_CACHE: Final = 100_000
# The read source when nothing waits in the spool: the table itself (so ``rowid`` is usable).
_PLAIN_SOURCE: Final = "WITH current_attempts AS (SELECT * FROM attempts)"


class CreditLedger:
    """The DuckDB credit ledger: one row per ``/process`` attempt and per job seen in ``/jobs``.

    Safe to share between threads; separate processes may use the same database and spool.

    Args:
        database: A DuckDB database string: a file path, or an ``md:...`` string passed through
            untouched. In-memory databases are refused (the ledger must outlive a connection).
        spool_dir: Where events wait while the database is locked. Defaults to
            ``<database>.spool`` beside a file database; required for remote databases.
        lock_timeout_s: How long one write or read keeps retrying a locked database before the
            write is left in the spool (or the read raises ``LedgerLockedError``).
        read_timeout_s: Like ``lock_timeout_s`` for reads; defaults to ``lock_timeout_s``.

    Example:
        >>> import tempfile, os
        >>> ledger = CreditLedger(os.path.join(tempfile.mkdtemp(), "ledger.duckdb"))
        >>> aid = ledger.begin_attempt(asset="images", sku="MUG-1", prompt="red mug", model_tier="pro")
        >>> ledger.finish_attempt(aid, status="completed", job_id="j1", credits_consumed=50)
        True
        >>> ledger.get_attempt(aid).credits_consumed
        50
    """

    def __init__(
        self,
        database: str,
        *,
        spool_dir: Path | None = None,
        lock_timeout_s: float = 10.0,
        read_timeout_s: float | None = None,
    ) -> None:
        database = str(database)
        if database in ("", ":memory:") or database.startswith(":memory:"):
            raise ValueError("the credit ledger needs a database that persists: a file path or md: string")
        if spool_dir is None:
            if is_remote(database):
                raise ValueError("a remote ledger database needs an explicit spool_dir")
            spool_dir = Path(database + ".spool")
        self.database = database
        self.spool = Spool(Path(spool_dir))
        # Claims of a local ledger are files beside it (a reader of the file must not block them).
        self._claims = None if database_file(database) is None else FileClaims(Path(database + ".claims"))
        self.lock_timeout_s = lock_timeout_s
        self.read_timeout_s = lock_timeout_s if read_timeout_s is None else read_timeout_s
        self._process_lock = process_lock(database)
        # A file ledger's lock sits beside it; a remote one serialises this machine's spool merges.
        lock_path = Path(database + ".lock") if not is_remote(database) else Path(str(spool_dir) + ".lock")
        self._file_lock = ledger_file_lock(lock_path)
        self._schema_ready = False
        self._spooled = spool_counter(database)
        # After a write found the database locked, the next writes within lock_timeout_s try the
        # lock once and go straight to the spool: a notebook holding the file for minutes must
        # not stall every asset write by lock_timeout_s each.
        self._busy_until = 0.0
        # Shared by this process's ledger objects for the same database, like the process lock.
        self._identities, self._identities_lock = _shared_identities(database)

    def __repr__(self) -> str:
        return f"CreditLedger({describe(self.database)!r})"

    # ------------------------------------------------------------------ writes

    def begin_attempt(
        self,
        *,
        asset: str,
        sku: str,
        prompt: str,
        model_tier: str,
        provider: str = "platform",
        fingerprint: str | None = None,
        run_id: str | None = None,
        image_id: str | None = None,
        image_url: str | None = None,
        style_id: str | None = None,
        character_id: str | None = None,
        source_ref: str | None = None,
        estimated_credits: int | None = None,
        sent_at: datetime | None = None,
        attempt_id: str | None = None,
        server_sent_at: datetime | None = None,
        clock_error_ms: int | None = None,
        merge: bool = True,
    ) -> str:
        """Record an attempt as ``pending`` just before ``POST /process`` is sent.

        There is deliberately no API key parameter, and key-shaped text (``flk_...``) in any
        value is masked before it is stored.

        Args:
            asset: The Dagster asset key (as a string) making the image.
            sku: The catalog SKU (partition key).
            prompt: The prompt as sent.
            model_tier: pro, standard or creative.
            provider: platform or a BYOK provider.
            fingerprint: Hash of the SKU's inputs, used by ``find_reusable``.
            run_id: The Dagster run id.
            image_id: Flokan image id being edited, if any.
            image_url: External image URL being edited, if any.
            style_id: Style preset, if any.
            character_id: Character preset, if any.
            source_ref: Where the source image came from (a local path, catalog column, ...).
            estimated_credits: The ``/estimate-credits`` upper bound.
            sent_at: When ``/process`` is sent; defaults to now.
            attempt_id: A caller-chosen id; defaults to a new UUID4.
            server_sent_at: ``sent_at`` on the server's clock (estimated from its answers).
            clock_error_ms: The error of that estimate, in milliseconds.
            merge: False makes the record durable in the spool only (a few milliseconds, never a
                wait for the database lock) and leaves merging it to the next write: for a record
                written the instant before a request goes out.

        Returns:
            The attempt id, to pass to ``finish_attempt``.

        Example:
            >>> aid = ledger.begin_attempt(asset="images", sku="MUG-1", prompt="red mug",
            ...                            model_tier="pro", estimated_credits=50)  # doctest: +SKIP
        """
        attempt_id = attempt_id or str(uuid.uuid4())
        fields = {
            "run_id": run_id,
            "asset": asset,
            "sku": sku,
            "fingerprint": fingerprint,
            "prompt": prompt,
            "model_tier": model_tier,
            "provider": provider,
            "image_id": image_id,
            "image_url": image_url,
            "style_id": style_id,
            "character_id": character_id,
            "source_ref": source_ref,
            "estimated_credits": estimated_credits,
            "status": "pending",
            "origin": "dagster",
            "sent_at": sent_at or utc_now(),
            "server_sent_at": server_sent_at,
            "clock_error_ms": clock_error_ms,
        }
        self._remember_identity(attempt_id, fields)
        event = LedgerEvent.create(attempt_id, "begin", fields)
        if database_file(self.database) is None:
            # A remote (shared) ledger merges at once: another machine cannot see this one's spool.
            # Left there (the database unreachable, or another thread's merge not done), a record
            # dies with this machine and another machine pays again: so it is merged before the
            # request goes out, or the request is not sent.
            if not self._write([event]) and self.flush_spool() and any(self.spool.directory.glob(f"*{event.event_id}*")):
                # Recorded as never sent, so nobody waits out the server's limit to prove it absent.
                self.finish_attempt(attempt_id, status="rejected", credits_consumed=0,
                                    error="not sent: the shared ledger did not take the write-ahead record")  # fmt: skip
                raise LedgerLockedError(
                    f"the shared ledger {describe(self.database)} did not take the write-ahead record of "
                    f"{asset}/{sku}; not sending (nothing paid)"
                )
        elif merge:
            self._write([event])
        else:
            self.spool.put(event)
            self._spooled.bump()
        return attempt_id

    def finish_attempt(
        self,
        attempt_id: str,
        *,
        status: str,
        job_id: str | None = None,
        credits_consumed: int | None = None,
        processing_ms: int | None = None,
        result_url: str | None = None,
        result_image_id: str | None = None,
        result_path: str | None = None,
        result_sha256: str | None = None,
        error: str | None = None,
        job_created_at: datetime | str | None = None,
        completed_at: datetime | str | None = None,
        provider_used: str | None = None,
        merge: bool = True,
    ) -> bool:
        """Record the outcome of ``POST /process`` for an attempt made by ``begin_attempt``.

        Fields left None keep whatever the ledger already has. A ``completed`` outcome clears a
        stale ``error``.

        Args:
            attempt_id: From ``begin_attempt``.
            status: completed, failed, unknown (sent, outcome not seen) or rejected.
            job_id: The job id from the response, if any.
            credits_consumed: Credits the response reported.
            processing_ms: Server-side processing time.
            result_url: The finished image's URL.
            result_image_id: The finished image's id (chainable as ``image_id``).
            result_path: Where the image was stored locally.
            result_sha256: Digest of the stored image.
            error: What went wrong (key-shaped text is masked).
            job_created_at: The job's ``created_at``.
            completed_at: The job's ``completed_at``.
            provider_used: ``system`` or the BYOK provider that ran.
            merge: False (a file ledger) makes the outcome durable in the spool only and leaves
                merging it to the next merging write or :meth:`merge_spooled`: for a batch that
                merges its many records in groups. Reads see it at once either way; a shared
                (remote) ledger merges at once regardless, as other machines cannot see this spool.

        Returns:
            True if the outcome is in the database now; False if it waits in the spool.

        Raises:
            ValueError: ``status`` is not a finishing status.

        Example:
            >>> ledger.finish_attempt(aid, status="unknown", error="read timeout")  # doctest: +SKIP
            True
        """
        if status == "pending":
            raise ValueError("finish_attempt needs a finishing status, not 'pending'")
        fields = {
            "status": status,
            "job_id": job_id,
            "job_status": status if status in ("completed", "failed") and job_id else None,
            "credits_consumed": credits_consumed,
            "processing_ms": processing_ms,
            "result_url": result_url,
            "result_image_id": result_image_id,
            "result_path": result_path,
            "result_sha256": result_sha256,
            "error": error,
            "job_created_at": job_created_at,
            "completed_at": completed_at,
            "provider_used": provider_used,
        }
        clear = ("error",) if status == "completed" else ()
        fields.update(self._identity(attempt_id))
        event = LedgerEvent.create(attempt_id, "finish", fields, clear=clear)
        if not merge and database_file(self.database) is not None:
            self.spool.put(event)
            self._spooled.bump()
            return False
        return self._write([event])

    def record_rejected(
        self,
        *,
        asset: str,
        sku: str,
        error: str,
        prompt: str | None = None,
        model_tier: str | None = None,
        provider: str | None = None,
        fingerprint: str | None = None,
        run_id: str | None = None,
        source_ref: str | None = None,
        estimated_credits: int | None = None,
    ) -> str:
        """Record a request refused locally before anything was spent (bad input, budget).

        Example:
            >>> ledger.record_rejected(asset="images", sku="MUG-2",
            ...                        error="prompt: must not be empty")  # doctest: +SKIP
            '3f2c...'
        """
        attempt_id = str(uuid.uuid4())
        fields = {
            "run_id": run_id,
            "asset": asset,
            "sku": sku,
            "fingerprint": fingerprint,
            "prompt": prompt,
            "model_tier": model_tier,
            "provider": provider,
            "source_ref": source_ref,
            "estimated_credits": estimated_credits,
            "credits_consumed": 0,
            "status": "rejected",
            "origin": "dagster",
            "error": error,
        }
        self._remember_identity(attempt_id, fields)
        self._write([LedgerEvent.create(attempt_id, "reject", fields)])
        return attempt_id

    def record_external_job(self, job_row: Mapping[str, Any], origin: str = "external") -> str:
        """Record a job seen in ``GET /jobs`` that no Dagster attempt owns.

        One row per job id: recording the same job again updates that row, and an identical
        row is a no-op. If a Dagster attempt owns (or later settles onto) the job, that attempt
        wins and the external row disappears, so the job's credits count once.

        Args:
            job_row: The job as returned by the API (unknown keys are ignored).
            origin: ``external`` (default) or ``reconciled``.

        Returns:
            The row's attempt id (derived from the job id).

        Raises:
            ValueError: The row has no job_id.

        Example:
            >>> ledger.record_external_job({"job_id": "j9", "status": "completed",
            ...                             "credits_consumed": 50})  # doctest: +SKIP
            'b1e5...'
        """
        return self.record_external_jobs([job_row], origin)[0]

    def record_external_jobs(self, job_rows: Iterable[Mapping[str, Any]], origin: str = "external") -> list[str]:
        """Record many jobs as :meth:`record_external_job` does, in one write (one transaction).

        The reconciliation sensor ingests a page of ``GET /jobs`` at a time; one write per page
        instead of one per job keeps a 1,000-job backlog within one tick.

        Returns:
            The rows' attempt ids, in order.

        Raises:
            ValueError: A row has no job_id (nothing is written then).

        Example:
            >>> ledger.record_external_jobs([{"job_id": "j9", "status": "completed"},
            ...                              {"job_id": "j10", "status": "failed"}])  # doctest: +SKIP
            ['b1e5...', '77c0...']
        """
        events = [_external_event(row, origin) for row in job_rows]
        if events:
            self._write(events)
        return [event.attempt_id for event in events]

    def settle_attempt(self, attempt_id: str, job_row: Mapping[str, Any]) -> bool:
        """Adopt a job row found in ``GET /jobs`` for an attempt (typically ``unknown``).

        The attempt takes the job's id, status, credits, result and timestamps, and its origin
        becomes ``reconciled``. A row already recorded for that job as external is merged away.

        Returns:
            True if the settlement is in the database now; False if it waits in the spool.

        Raises:
            ValueError: The job row has no job_id, or another Dagster attempt already owns it.

        Example:
            >>> ledger.settle_attempt(aid, {"job_id": "j1", "status": "completed",
            ...                             "credits_consumed": 50})  # doctest: +SKIP
            True
        """
        fields = {k: v for k, v in job_row_fields(job_row).items() if k in _SETTLE_FIELDS}
        fields["origin"] = "reconciled"
        owner = self._job_owner(fields["job_id"])
        if owner is not None and owner != attempt_id:
            raise ValueError(f"job {fields['job_id']} is already settled onto attempt {owner}")
        clear = ("error",) if fields["status"] == "completed" else ()
        fields.update(self._identity(attempt_id))
        return self._write([LedgerEvent.create(attempt_id, "settle", fields, clear=clear)])

    # ------------------------------------------------------------------ claims

    def claim_skus(
        self,
        asset: str,
        run_id: str,
        fingerprints: Mapping[str, str | None],
        judge: Judge,
        holder: ProcessIdentity | None = None,
    ) -> ClaimOutcome:
        """Claim SKUs of ``asset`` for ``run_id`` before anything is sent, in one read-write transaction.

        Not spooled: a claim must be decided now. If the database stays locked past
        ``read_timeout_s`` (the time a run's planning waits for it), every SKU is refused (not
        sent, nothing paid).

        Args:
            asset: The asset key string.
            run_id: The claiming run.
            fingerprints: SKU -> input fingerprint to spend on.
            judge: Says whether another run's claim is alive, with the evidence.
            holder: The claiming process; this one by default.

        Example:
            >>> from flokan_dagster.ledger.claims import Liveness
            >>> got = ledger.claim_skus("images", "run-1", {"MUG-1": "fp1"},
            ...                         judge=lambda c: Liveness(True, "test"))  # doctest: +SKIP
            >>> got.granted  # doctest: +SKIP
            {'MUG-1': None}
        """
        holder = holder or ProcessIdentity.current()
        try:
            if self._claims is not None:
                with self._process_lock:
                    return self._claims.claim(asset, run_id, fingerprints, judge, holder, max(self.lock_timeout_s, self.read_timeout_s))
            return self._transact(
                lambda conn: claim_rows.claim(conn, asset, run_id, fingerprints, judge, holder),
                max(self.lock_timeout_s, self.read_timeout_s),
            )
        except LedgerLockedError as exc:
            why = f"the ledger stayed locked, so the SKU could not be claimed ({exc}); not sent, nothing paid"
            return ClaimOutcome(refused={sku: f"SKU {sku!r}: {why}" for sku in fingerprints})

    def release_claims(self, run_id: str, asset: str) -> int:
        """Release the claims of ``run_id`` on ``asset`` (when its step finishes); returns how many.

        A locked ledger leaves them: the run is then finished in Dagster, which is the evidence
        the next claimer goes by.
        """
        try:
            if self._claims is not None:
                return self._claims.release(run_id, asset, self.lock_timeout_s)
            return self._transact(lambda conn: claim_rows.release(conn, run_id, asset), self.lock_timeout_s)
        except LedgerLockedError:
            logger.warning("ledger %s locked; claims of run %s released by the next claimer on evidence", describe(self.database), run_id)
            return 0

    def heartbeat_claims(self, run_id: str, asset: str) -> bool:
        """Refresh the heartbeat of ``run_id``'s claims on ``asset``; False if the ledger stayed locked."""
        try:
            # Briefly: a missed beat is retried in 20 s, and waiting would stall this process's reads.
            if self._claims is not None:
                self._claims.heartbeat(run_id, asset, min(self.lock_timeout_s, 1.0))
                return True
            self._transact(lambda conn: claim_rows.heartbeat(conn, run_id, asset), min(self.lock_timeout_s, 1.0))
        except LedgerLockedError:
            return False
        return True

    def claims_on(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Claim]:
        """The current claims on ``(asset, sku)`` pairs (absent: unclaimed).

        Example:
            >>> ledger.claims_on([("images", "MUG-1")])  # doctest: +SKIP
            {('images', 'MUG-1'): Claim(asset='images', sku='MUG-1', ...)}
        """
        wanted = sorted(set(keys))
        if not wanted:
            return {}

        def query(conn: duckdb.DuckDBPyConnection | None, source: str = "") -> dict[tuple[str, str], Claim]:
            found: dict[tuple[str, str], Claim] = {}
            for asset in sorted({a for a, _ in wanted}):
                skus = [s for a, s in wanted if a == asset]
                held = self._claims.claims_for(asset, skus) if self._claims is not None else claim_rows.claims_for(conn, asset, skus)  # type: ignore[arg-type]
                found.update({(asset, sku): c for sku, c in held.items()})
            return found

        return query(None) if self._claims is not None else self._read(query)

    def send_checks(self, asset: str, fingerprints: Mapping[str, str], run_id: str) -> dict[str, SendCheck]:
        """What the ledger says right before SKUs' ``/process`` calls are sent (one read for all).

        Returns:
            Per SKU: its claim holder, a completed attempt with its fingerprint (reuse it instead
            of paying), and other runs' attempts with its fingerprint still unsettled.

        Example:
            >>> ledger.send_checks("images", {"MUG-1": "fp1"}, "run-1")["MUG-1"].holder  # doctest: +SKIP
            Claim(asset='images', sku='MUG-1', ..., run_id='run-1', ...)
        """
        skus = sorted(fingerprints)
        # One list item per SKU, SKU and fingerprint split by the record separator (one text
        # parameter: DuckDB binds a list parameter value by value, ~0.1-0.2 ms each).
        pairs = text_list(f"{sku}\x1e{fingerprints[sku]}" for sku in skus)

        def query(conn: duckdb.DuckDBPyConnection, source: str) -> dict[str, SendCheck]:
            holders = self._claims.claims_for(asset, skus) if self._claims is not None else claim_rows.claims_for(conn, asset, skus)
            rows = conn.execute(
                f"{source}, wanted AS (SELECT split_part(value, chr(30), 1) AS sku, split_part(value, chr(30), 2) AS fingerprint"
                f" FROM {UNNEST_TEXT})"
                f" SELECT {', '.join('a.' + c for c in COLUMNS)} FROM current_attempts a JOIN wanted w USING (sku, fingerprint)"
                " WHERE a.asset = ? AND (a.status = 'completed' OR (a.status IN ('pending', 'unknown') AND a.run_id IS DISTINCT FROM ?))"
                " ORDER BY coalesce(a.completed_at, a.updated_at) DESC, a.revision DESC",
                [pairs, asset, run_id],
            ).fetchall()
            found: dict[str, list[AttemptRecord]] = {sku: [] for sku in skus}
            for row in rows:
                record = AttemptRecord.from_values(row)
                found[record.sku or ""].append(record)
            return {
                sku: SendCheck(
                    holders.get(sku),
                    next((r for r in found[sku] if r.status == "completed"), None),
                    [r for r in found[sku] if r.status != "completed"],
                )
                for sku in skus
            }

        return self._read(query)

    def pending_twins(self, fields: Any, except_attempt: str | None) -> list[str]:
        """Pending attempts without a job whose request has the same fields as ``fields``.

        While one is in flight, a job matching ``fields`` may be its: adoption waits.

        Args:
            fields: A RequestFields, AttemptRecord or anything with the request attributes.
            except_attempt: The attempt being settled.
        """
        names = ("prompt", "model_tier", "provider", "image_id", "image_url", "style_id", "character_id")
        values = [getattr(fields, name, None) for name in names]
        values[2] = values[2] or "platform"
        condition = " AND ".join(
            f"coalesce({name}, 'platform') = ?" if name == "provider" else f"{name} IS NOT DISTINCT FROM ?"
            for name in names
        )
        rows = self._read(
            lambda conn, source: conn.execute(
                f"{source} SELECT attempt_id FROM current_attempts WHERE status = 'pending' AND job_id IS NULL"
                f" AND origin IS DISTINCT FROM 'external' AND attempt_id IS DISTINCT FROM ? AND {condition}",
                [except_attempt, *values],
            ).fetchall()
        )
        return [row[0] for row in rows]

    def flush_spool(self) -> int:
        """Merge spooled events into the database now.

        Returns:
            How many events still wait in the spool (0 once all are merged).

        Example:
            >>> ledger.flush_spool()  # doctest: +SKIP
            0
        """
        with self._process_lock:
            self._busy_until = 0.0
            self._merge_spool()
        return self.spool.count()

    def compact(self, *, force: bool = False, fraction: float = DUE_FRACTION) -> Compaction:
        """Rewrite a ledger file's attempts in (asset, SKU) order when due (``ledger.compaction``).

        Due once ``fraction`` of the attempts was written since the last compaction (or always,
        with ``force``). One transaction under the exclusive ledger lock, checked row for row
        before it commits: nothing is lost or changed but the order. Writers spool while it runs
        (about 7 s per 1,000,000 attempts); reads wait up to ``read_timeout_s``.

        Returns:
            What was done; a remote ledger (PostgreSQL, MotherDuck) is left as it is.

        Raises:
            LedgerLockedError: The ledger stayed locked for ``lock_timeout_s``.
            LedgerCompactionError: The rewrite did not match (rolled back; nothing changed).

        Example:
            >>> ledger.compact(force=True).compacted  # doctest: +SKIP
            True
        """
        if is_remote(self.database):
            return Compaction(Layout(0, 0), compacted=False, reason=f"{describe(self.database)} is not a ledger file; "
                              "a shared ledger finds a batch's rows through its indexes")  # fmt: skip
        path = database_file(self.database)
        if path is not None and not path.exists():
            return Compaction(Layout(0, 0), compacted=False, reason="the ledger holds no attempts")
        started = time.perf_counter()
        done = self._transact(lambda conn: compact_if_due(conn, force=force, fraction=fraction), self.lock_timeout_s)
        return dataclasses.replace(done, seconds=time.perf_counter() - started) if done.compacted else done

    def merge_spooled(self) -> bool:
        """Merge what waits in the spool unless another thread of this process is merging now.

        The group commit of every write, on its own: a batch writing its records with
        ``merge=False`` calls it now and then, so many records share one open, transaction and
        checkpoint of the database. It never waits for another thread's merge (that merge takes
        what is spooled), and waits for a locked database only as a write would.

        Returns:
            True if a merge ran here and left nothing of this process's behind; False otherwise.

        Example:
            >>> ledger.merge_spooled()  # doctest: +SKIP
            True
        """
        return self._merge_if_free([])

    def quarantined_files(self) -> list[QuarantinedFile]:
        """Return the spool files that could not be read and are not yet resolved.

        Looks at the spool first, so a file damaged since the last merge is quarantined now.

        Example:
            >>> [f.name for f in ledger.quarantined_files()]  # doctest: +SKIP
            []
        """
        self.spool.pending()
        return self.spool.quarantined()

    def quarantine_blocks(self, asset: str, skus: Iterable[str]) -> dict[str, str]:
        """Return the SKUs of ``asset`` a quarantined spool file may concern, each with why.

        A damaged spool file may have held the only record of a paid attempt, so spending on a
        SKU it may concern waits until a person resolves it (``flokan-dagster ledger doctor``).
        The file's name (a digest of asset and SKU) or its legible remains narrow it to one SKU;
        a file that reveals nothing (named before names carried the digest, and unreadable)
        blocks every SKU of every asset, and one known to record only a job seen in ``GET
        /jobs`` blocks none.

        Example:
            >>> ledger.quarantine_blocks("images", ["MUG-1", "MUG-2"])  # doctest: +SKIP
            {'MUG-1': 'ledger spool file ... may hold a record of this SKU ...'}
        """
        wanted = list(dict.fromkeys(skus))
        blocked: dict[str, str] = {}
        for damaged in self.quarantined_files():
            concerned = damaged.concerns(asset, wanted)
            for sku in wanted if concerned is None else concerned:
                blocked.setdefault(
                    sku,
                    f"ledger spool file {damaged.name} could not be read ({damaged.reason}) and may hold a record"
                    f" of a paid attempt for this SKU; it is kept at {damaged.path}. Check the SKU's jobs"
                    f" (`flokan-dagster reconcile`), then run `flokan-dagster ledger doctor --resolve {damaged.name}`",
                )
        return blocked

    def resolve_quarantined(self, name: str, note: str = "") -> Path:
        """Mark a quarantined spool file resolved, so it blocks spending no more; the file is kept.

        Raises:
            FileNotFoundError: No quarantined file has that name.
        """
        return self.spool.resolve(name, note)

    def spooled_count(self) -> int:
        """Return how many events wait in the spool for the database."""
        return self.spool.count()

    # ------------------------------------------------------------------ reads

    def get_attempt(self, attempt_id: str) -> AttemptRecord | None:
        """Return one attempt, or None.

        Example:
            >>> ledger.get_attempt(aid).status  # doctest: +SKIP
            'completed'
        """
        rows = self._query("WHERE attempt_id = ?", [attempt_id])
        return rows[0] if rows else None

    def find_reusable(self, asset: str, sku: str, fingerprint: str) -> AttemptRecord | None:
        """Return the latest completed attempt for this asset, SKU and input fingerprint.

        An unchanged SKU is not regenerated: the caller adopts this attempt's result instead.

        Example:
            >>> ledger.find_reusable("images", "MUG-1", "fp-1")  # doctest: +SKIP
            AttemptRecord(attempt_id='...', status='completed', ...)
        """
        rows = self._query(
            "WHERE status = 'completed' AND asset = ? AND sku = ? AND fingerprint = ?"
            " ORDER BY coalesce(completed_at, updated_at) DESC, revision DESC LIMIT 1",
            [asset, sku, fingerprint],
        )
        return rows[0] if rows else None

    def unknown_attempts(self, asset: str | None = None) -> list[AttemptRecord]:
        """Return attempts whose outcome is unknown (sent, no answer), oldest first.

        Example:
            >>> [a.attempt_id for a in ledger.unknown_attempts("images")]  # doctest: +SKIP
            []
        """
        return self._query(
            "WHERE status = 'unknown' AND (CAST(? AS VARCHAR) IS NULL OR asset = ?)"
            " ORDER BY sent_at, attempt_id",
            [asset, asset],
        )

    def open_attempts(self) -> list[AttemptRecord]:
        """Return pending rows that have a job id, to refresh from ``GET /jobs/:id``.

        Example:
            >>> [a.job_id for a in ledger.open_attempts()]  # doctest: +SKIP
            []
        """
        return self._query("WHERE status = 'pending' AND job_id IS NOT NULL ORDER BY recorded_at, attempt_id", [])

    def known_job_ids(self, job_ids: Iterable[str]) -> set[str]:
        """Return which of ``job_ids`` the ledger already holds (any origin).

        Example:
            >>> ledger.known_job_ids(["j1", "j-new"])  # doctest: +SKIP
            {'j1'}
        """
        return self._job_ids_among(job_ids, "TRUE", [])

    def owned_job_ids(self, job_ids: Iterable[str], except_attempt: str | None = None) -> set[str]:
        """Return which of ``job_ids`` belong to a Dagster attempt (not an external row).

        Settling an unknown outcome must not adopt a job another attempt already owns.

        Args:
            job_ids: Candidate job ids.
            except_attempt: An attempt whose own job does not count (the one being settled).

        Example:
            >>> ledger.owned_job_ids(["j1", "j-new"])  # doctest: +SKIP
            {'j1'}
        """
        return self._job_ids_among(job_ids, "origin <> 'external' AND attempt_id IS DISTINCT FROM ?", [except_attempt])

    def _job_ids_among(self, job_ids: Iterable[str], condition: str, params: list[Any]) -> set[str]:
        """Which of ``job_ids`` have a row meeting ``condition``."""
        wanted = sorted({str(j) for j in job_ids})
        if not wanted:
            return set()
        rows = self._read(
            lambda conn, source: conn.execute(
                f"{source} SELECT DISTINCT job_id FROM current_attempts WHERE job_id IN (SELECT unnest(?)) AND {condition}",
                [wanted, *params],
            ).fetchall()
        )
        return {r[0] for r in rows}

    def attempts_for_jobs(self, job_ids: Iterable[str]) -> list[AttemptRecord]:
        """Return the rows holding ``job_ids``: the owning attempt, or the external row.

        Example:
            >>> [a.origin for a in ledger.attempts_for_jobs(["j1"])]  # doctest: +SKIP
            ['dagster']
        """
        wanted = sorted({str(j) for j in job_ids})
        if not wanted:
            return []
        return self._query("WHERE job_id IN (SELECT unnest(?)) ORDER BY recorded_at, attempt_id", [wanted])

    def in_flight_attempts(self) -> list[AttemptRecord]:
        """Return pending attempts without a job id, oldest first.

        Either ``/process`` is still in flight, or the run died before recording its outcome.

        Example:
            >>> [a.sku for a in ledger.in_flight_attempts()]  # doctest: +SKIP
            ['MUG-1']
        """
        return self._query("WHERE status = 'pending' AND job_id IS NULL ORDER BY sent_at, attempt_id", [])

    def external_jobs_between(self, start: datetime, end: datetime) -> list[AttemptRecord]:
        """Return external rows (jobs no attempt owns) created between ``start`` and ``end``, newest first.

        Where an unknown outcome's job may already be, if the sensor saw it before the attempt
        was marked unknown.

        Example:
            >>> ledger.external_jobs_between(datetime(2026, 5, 4, 11), datetime(2026, 5, 4, 12))  # doctest: +SKIP
            []
        """
        return self._query(
            "WHERE origin = 'external' AND job_created_at BETWEEN ? AND ? ORDER BY job_created_at DESC, attempt_id",
            [to_utc_naive(start), to_utc_naive(end)],
        )

    def newest_job_created_at(self) -> datetime | None:
        """Return the newest ``job_created_at`` the ledger holds (naive UTC), or None.

        Example:
            >>> ledger.newest_job_created_at()  # doctest: +SKIP
            datetime.datetime(2026, 5, 4, 11, 0)
        """
        row = self._read(
            lambda conn, source: conn.execute(f"{source} SELECT max(job_created_at) FROM current_attempts").fetchone()
        )
        return row[0] if row else None

    def latest_completed_fingerprints(self, asset: str) -> dict[str, str]:
        """Return, per SKU of ``asset``, the fingerprint of its latest completed attempt.

        A SKU whose catalog fingerprint differs (or that is absent) is stale.

        Example:
            >>> ledger.latest_completed_fingerprints("images")  # doctest: +SKIP
            {'MUG-1': 'fp1'}
        """
        rows = self._read(
            lambda conn, source: conn.execute(
                f"""{source} SELECT sku, arg_max(fingerprint, (coalesce(completed_at, updated_at), revision))
                FROM current_attempts
                WHERE status = 'completed' AND asset = ? AND sku IS NOT NULL AND fingerprint IS NOT NULL
                GROUP BY sku""",
                [asset],
            ).fetchall()
        )
        return {sku: fingerprint for sku, fingerprint in rows}

    def failed_since(self, since: datetime) -> list[AttemptRecord]:
        """Return Dagster attempts (not external rows) that failed and were updated at or after ``since``.

        Example:
            >>> [a.sku for a in ledger.failed_since(datetime(2026, 5, 4))]  # doctest: +SKIP
            ['MUG-2']
        """
        return self._query(
            "WHERE status = 'failed' AND origin IS DISTINCT FROM 'external' AND updated_at >= ?"
            " ORDER BY updated_at, attempt_id",
            [to_utc_naive(since)],
        )

    def credits_spent(self, since: datetime, *, include_in_flight: bool = True) -> int:
        """Return credits spent on jobs created at or after ``since`` (for a daily budget).

        Args:
            since: Lower bound (aware datetimes are converted to UTC; naive ones are UTC).
            include_in_flight: Also count the estimate of pending and unknown attempts, which
                are probably being charged; a budget that ignored them would overspend.

        Example:
            >>> ledger.credits_spent(datetime(2026, 5, 4))  # doctest: +SKIP
            150
        """
        bound = to_utc_naive(since)
        row = self._read(
            lambda conn, source: conn.execute(
                f"""{source}
                SELECT coalesce(sum(coalesce(credits_consumed,
                    CASE WHEN ? AND status IN ('pending', 'unknown') THEN estimated_credits END, 0)), 0)
                FROM current_attempts
                WHERE coalesce(job_created_at, sent_at, recorded_at) >= ?""",
                [include_in_flight, bound],
            ).fetchone()
        )
        return int(row[0]) if row else 0

    def attempts_for(self, asset: str | None = None, sku: str | None = None) -> list[AttemptRecord]:
        """Return all rows, optionally for one asset and/or SKU, oldest first.

        With a SKU this reads that SKU's rows (see :meth:`attempts_for_skus`); without one it
        reads every row of the asset, which grows with the ledger: for reports and tests.

        Example:
            >>> [a.status for a in ledger.attempts_for(sku="MUG-1")]  # doctest: +SKIP
            ['unknown', 'completed']
        """
        if sku is not None:
            return self.attempts_for_skus(asset, [sku])
        return self._query(
            "WHERE (CAST(? AS VARCHAR) IS NULL OR asset = ?) ORDER BY recorded_at, attempt_id", [asset, asset]
        )

    def attempts_for_skus(self, asset: str | Iterable[str] | None, skus: Iterable[str]) -> list[AttemptRecord]:
        """Return the rows of ``skus`` (for ``asset``, or any of several assets), oldest first.

        The database filters: a semi-join on the SKU column, the asset filtered alongside.
        Runs read less still (:meth:`deciding_attempts`).

        Args:
            asset: An asset key string, several (a run and its upstream), or None for every asset.
            skus: The SKUs wanted; duplicates are ignored.

        Example:
            >>> [a.sku for a in ledger.attempts_for_skus("images", ["MUG-1", "MUG-2"])]  # doctest: +SKIP
            ['MUG-1', 'MUG-2', 'MUG-1']
        """
        wanted = sorted({str(sku) for sku in skus})
        assets = None if asset is None else [asset] if isinstance(asset, str) else sorted(set(asset))
        if not wanted or assets == []:
            return []
        return self._query(
            f"WHERE sku IN (SELECT value FROM {UNNEST_TEXT}) AND (? OR asset IN (SELECT value FROM {UNNEST_TEXT}))"
            " ORDER BY recorded_at, attempt_id",
            [text_list(wanted), assets is None, text_list(assets or [])],
        )

    def deciding_attempts(self, asset: str, fingerprints: Mapping[str, str | None]) -> list[AttemptRecord]:
        """Return the attempts of ``asset`` that decide a batch's plan, oldest first: what a run reads.

        Per SKU of ``fingerprints``: the latest completed attempt with a result image (the
        upstream image a chained edit starts from), the latest such attempt with the SKU's
        current fingerprint (reusable), and every unsettled attempt (``unknown`` or ``pending``)
        with that fingerprint (to settle before paying again). "Latest" orders as planning does:
        completion (else update, else record) time, then revision, the earliest recorded winning
        a tie. A None fingerprint asks for the latest completed attempt only.

        The batch's rows are found over narrow columns and whole rows read only for the few
        chosen, so the cost follows the batch, not the years of superseded attempts. Where a
        compacted ledger keeps the batch's rows together (``compaction.batch_read_whole``),
        every attempt of the batch is returned instead, read whole in one scan of a block or two:
        cheaper than choosing, and planning decides the same from it (``planning.decide``).

        Example:
            >>> [a.status for a in ledger.deciding_attempts("images", {"MUG-1": "fp1"})]  # doctest: +SKIP
            ['completed']
        """
        if not fingerprints:
            return []
        # One list item per SKU: the SKU and its fingerprint split by the record separator.
        pairs = text_list(f"{sku}\x1e{fingerprint or ''}" for sku, fingerprint in fingerprints.items())

        def run(conn: duckdb.DuckDBPyConnection, source: str) -> list[AttemptRecord]:
            # Without spooled events a DuckDB file's table is read directly (PostgreSQL, or a spool
            # overlay, goes through current_attempts).
            direct = source == _PLAIN_SOURCE and not uses_postgres(conn)
            table = "attempts" if direct else "current_attempts"
            whole = batch_read_whole(conn, asset, list(fingerprints)) if direct else None
            if whole is not None:
                return [AttemptRecord.from_values(row) for row in whole]
            latest = ("ORDER BY coalesce(a.completed_at, a.updated_at, a.recorded_at) DESC, coalesce(a.revision, 0) DESC,"
                      " a.recorded_at, a.attempt_id")  # fmt: skip
            # result_image_id is optional in job rows: a completed attempt without it is reusable.
            made = "(a.status = 'completed')"
            same = "coalesce(a.fingerprint = w.fingerprint, false)"
            # Two statements: the choice over narrow columns, then whole rows for the chosen keys
            # only. (As one statement DuckDB scanned every column of every row for the second part.)
            chosen = conn.execute(
                f"""{source}, wanted AS (
                    SELECT split_part(value, chr(30), 1) AS sku, nullif(split_part(value, chr(30), 2), '') AS fingerprint
                    FROM {UNNEST_TEXT})
                SELECT row_key FROM (
                    SELECT a.attempt_id AS row_key, a.status, {made} AS made, {same} AS same,
                           row_number() OVER (PARTITION BY a.sku, {made} {latest}) AS nth,
                           row_number() OVER (PARTITION BY a.sku, {made}, {same} {latest}) AS nth_same
                    FROM {table} a JOIN wanted w ON a.sku = w.sku
                    WHERE a.asset = ?)
                WHERE (made AND (nth = 1 OR (same AND nth_same = 1))) OR (same AND status IN ('unknown', 'pending'))""",
                [pairs, asset],
            ).fetchall()
            if not chosen:
                return []
            # Whole rows through the primary key's index: a handful of point fetches. (By rowid the
            # filter went into a scan that decompressed every column of every row group.)
            cursor = conn.execute(
                f"""{source} SELECT {_SELECT_COLUMNS} FROM {table}
                WHERE attempt_id IN (SELECT value FROM {UNNEST_TEXT})
                ORDER BY recorded_at, attempt_id""",
                [text_list(row[0] for row in chosen)],
            )
            return [AttemptRecord.from_values(row) for row in cursor.fetchall()]

        return self._read(run)

    def stale_skus(self, asset: str, fingerprints: Mapping[str, str]) -> list[str]:
        """Return the SKUs of ``fingerprints`` whose latest completed image of ``asset`` has another fingerprint.

        A SKU with no completed image is stale too. The comparison is one SQL join over the
        ledger, so a 100,000-SKU catalog never becomes 100,000 Python lookups.

        Args:
            asset: The asset key string.
            fingerprints: Each SKU's current input fingerprint (from the catalog).

        Returns:
            The stale SKUs, sorted.

        Example:
            >>> ledger.stale_skus("images", {"MUG-1": "fp1", "MUG-2": "fp2"})  # doctest: +SKIP
            ['MUG-2']
        """
        if not fingerprints:
            return []
        # Each pair is one list item, SKU and fingerprint split by the record separator (neither holds it).
        pairs = text_list(f"{sku}\x1e{fingerprint}" for sku, fingerprint in fingerprints.items())
        rows = self._read(
            lambda conn, source: conn.execute(
                f"""{source}, latest AS (
                    SELECT sku, arg_max(fingerprint, (coalesce(completed_at, updated_at), revision)) AS fingerprint
                    FROM current_attempts
                    WHERE status = 'completed' AND asset = ? AND sku IS NOT NULL AND fingerprint IS NOT NULL
                    GROUP BY sku),
                wanted AS (SELECT split_part(value, chr(30), 1) AS sku, split_part(value, chr(30), 2) AS fingerprint
                           FROM {UNNEST_TEXT})
                SELECT wanted.sku FROM wanted LEFT JOIN latest ON latest.sku = wanted.sku
                WHERE latest.fingerprint IS DISTINCT FROM wanted.fingerprint
                ORDER BY wanted.sku""",
                [asset, pairs],
            ).fetchall()
        )
        return [row[0] for row in rows]

    def read(self, query: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``query`` on a read-only connection to the committed ledger (spool not included).

        For reports and ad-hoc SQL; the connection is closed afterwards.

        Raises:
            LedgerLockedError: The database stayed locked past ``read_timeout_s``.

        Example:
            >>> ledger.read(lambda c: c.execute("SELECT count(*) FROM attempts").fetchone()[0])  # doctest: +SKIP
            3
        """
        with self._process_lock, self._reader() as conn:
            return query(conn)

    # ------------------------------------------------------------------ internals

    def _remember_identity(self, attempt_id: str, fields: Mapping[str, Any]) -> None:
        """Keep an attempt's identity so its later events carry it without a read."""
        with self._identities_lock:
            if len(self._identities) >= _IDENTITY_CACHE:
                self._identities.pop(next(iter(self._identities)))
            self._identities[attempt_id] = {k: fields[k] for k in DESCRIPTION_FIELDS if fields.get(k) is not None}

    def _identity(self, attempt_id: str) -> dict[str, Any]:
        """What describes the attempt (asset, SKU, fingerprint, run id, the request as sent, when,
        its estimate: ``records.DESCRIPTION_FIELDS``), for every later event to carry (issue 10).

        From this process's memory when it began the attempt, else from the ledger (spool
        included). If the ledger cannot be read now, the event goes without: it is still recorded
        and its row still rebuilt from the attempt's other events.
        """
        with self._identities_lock:
            known = self._identities.get(attempt_id)
        if known is not None:
            return dict(known)
        # A write must not wait on a locked ledger longer than a write would.
        quick = CreditLedger(
            self.database,
            spool_dir=self.spool.directory,
            lock_timeout_s=self.lock_timeout_s,
            read_timeout_s=min(self.read_timeout_s, self.lock_timeout_s),
        )
        try:
            record = quick.get_attempt(attempt_id)
        except LedgerLockedError:
            logger.warning("ledger %s locked; attempt %s's event goes without its identity", describe(self.database), attempt_id)
            return {}
        if record is None:
            return {}
        identity = {k: getattr(record, k) for k in DESCRIPTION_FIELDS if getattr(record, k) is not None}
        self._remember_identity(attempt_id, identity)
        return identity

    def _write(self, events: list[LedgerEvent]) -> bool:
        # An event is durable once it is in the spool (fsync'd, renamed); merging it into DuckDB
        # can wait. So a writer that finds another thread of this process holding the lock does
        # not queue behind it: that thread merges every spooled event, looping while new ones
        # arrive (a group commit). Reads overlay the spool, so nothing is missed meanwhile.
        written = [self.spool.put(event) for event in events]
        self._spooled.bump()
        return self._merge_if_free(written)

    def _merge_if_free(self, written: list[Path]) -> bool:
        """Merge the spool unless another thread of this process is at it (it takes ``written`` too)."""
        merged = False
        while self._process_lock.acquire(blocking=False):
            try:
                seen = self._spooled.value
                merged = self._merge_spool(written) or merged
            finally:
                self._process_lock.release()
            if self._spooled.value == seen or self._busy_until > time.monotonic():
                break
        return merged and not any(path.exists() for path in written)

    def _merge_spool(self, written: list[Path] | None = None) -> bool:
        """Apply every spooled event in one transaction; the one place the ledger writes DuckDB.

        Under the exclusive ledger lock: open read-write, apply the spool, commit (durable in the
        WAL), close (checkpointing when due), and only then delete the merged spool files, so no
        other process can see the file between a commit and the removal of what it applied, or
        apply the same files in a transaction of its own at the same time.

        Returns:
            True once the spool (or at least ``written``) is in the database; False if locked.
        """
        timeout_s = 0.0 if time.monotonic() < self._busy_until else self.lock_timeout_s
        try:
            with locked_connection(
                self.database,
                self._file_lock,
                read_only=False,
                timeout_s=timeout_s,
                # Files are removed only after their commit, so gone means merged by another process.
                no_longer_needed=lambda: bool(written) and not any(p.exists() for p in written or ()),
            ) as conn:
                self._busy_until = 0.0
                if conn is None:
                    return True
                if not self._schema_ready:
                    ensure_schema(conn)
                    self._schema_ready = True
                pending = self.spool.pending()
                if pending:
                    apply_events(conn, [event for _, event in pending])
                release(conn, self.database, read_only=False)
                self.spool.remove([path for path, _ in pending])
            return True
        except LedgerLockedError:
            self._busy_until = time.monotonic() + self.lock_timeout_s
            logger.warning(
                "ledger %s is locked; %d event(s) kept in spool %s",
                describe(self.database),
                self.spool.count(),
                self.spool.directory,
            )
            return False

    def _transact(self, work: Callable[[duckdb.DuckDBPyConnection], T], timeout_s: float) -> T:
        """Run ``work`` in one read-write transaction under the exclusive ledger lock (a claim:
        decided now, never spooled), waiting up to ``timeout_s`` for the file."""
        with self._process_lock, locked_connection(
            self.database, self._file_lock, read_only=False, timeout_s=timeout_s
        ) as conn:
            assert conn is not None  # only a no_longer_needed() callback yields None
            if not self._schema_ready:
                ensure_schema(conn)
                self._schema_ready = True
            conn.execute("BEGIN TRANSACTION")
            try:
                serialize_writers(conn)  # a shared PostgreSQL ledger: one writer at a time, any machine
                result = work(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    @contextmanager
    def _reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection under the shared ledger lock (the caller holds the process lock)."""
        path = database_file(self.database)
        if path is not None and not path.exists():
            # Nothing written yet (or only spooled): read an empty ledger.
            with closing(duckdb.connect()) as empty:
                ensure_schema(empty)
                yield empty
            return
        with locked_connection(self.database, self._file_lock, read_only=True, timeout_s=self.read_timeout_s) as conn:
            assert conn is not None  # only a no_longer_needed() callback yields None
            tables = conn.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'attempts'").fetchone()
            if path is not None and not (tables and tables[0]):
                # A file with no tables yet: its creator died before its first merge committed (the
                # write-ahead records wait in the spool). Nothing is committed: read an empty ledger.
                with closing(duckdb.connect()) as empty:
                    ensure_schema(empty)
                    yield empty
                return
            yield conn

    def _read(self, query: Callable[[duckdb.DuckDBPyConnection, str], T]) -> T:
        """Run ``query(conn, source)`` where ``source`` defines ``current_attempts``.

        ``current_attempts`` is the committed table overlaid with the folded spooled events,
        keeping the same one-row-per-job rule the writer keeps.
        """
        with self._process_lock, self._reader() as conn:
            spooled = [event for _, event in self.spool.pending()]
            if not spooled:
                return query(conn, _PLAIN_SOURCE)
            conn.execute("CREATE TEMP TABLE spool_overlay AS SELECT * FROM attempts LIMIT 0")
            replaced, rows = fold_with_stored(conn, spooled)
            insert_rows(conn, "spool_overlay", rows)
            conn.execute(f"CREATE TEMP TABLE spool_replaced AS SELECT value AS attempt_id FROM {JSON_TEXTS}", [json_texts(replaced)])
            source = """WITH merged AS (
                    SELECT * FROM attempts WHERE attempt_id NOT IN (SELECT attempt_id FROM spool_replaced)
                    UNION ALL SELECT * FROM spool_overlay),
                current_attempts AS (
                    SELECT * FROM merged m WHERE NOT coalesce(m.origin = 'external' AND m.job_id IN (
                        SELECT job_id FROM merged WHERE origin IS DISTINCT FROM 'external' AND job_id IS NOT NULL), false))"""
            return query(conn, source)

    def _query(self, where_sql: str, params: list[Any]) -> list[AttemptRecord]:
        def run(conn: duckdb.DuckDBPyConnection, source: str) -> list[AttemptRecord]:
            cursor = conn.execute(f"{source} SELECT {_SELECT_COLUMNS} FROM current_attempts {where_sql}", params)
            return [AttemptRecord.from_values(row) for row in cursor.fetchall()]

        return self._read(run)

    def _job_owner(self, job_id: str) -> str | None:
        """Return the non-external attempt holding ``job_id``; None if none (or unreadable)."""
        try:
            rows = self._query("WHERE job_id = ? AND origin IS DISTINCT FROM 'external'", [job_id])
        except LedgerLockedError:
            # The check guards against a matching bug; it must not block settling.
            logger.warning("ledger %s locked; settling without the duplicate-job check", describe(self.database))
            return None
        return rows[0].attempt_id if rows else None



_IDENTITIES: dict[str, tuple[dict[str, dict[str, Any]], threading.Lock]] = {}
_IDENTITIES_GUARD: Final = threading.Lock()


def _shared_identities(database: str) -> tuple[dict[str, dict[str, Any]], threading.Lock]:
    """This process's attempt-identity cache for ``database`` and the lock guarding it."""
    key = database if is_remote(database) else str(Path(database).resolve())
    with _IDENTITIES_GUARD:
        return _IDENTITIES.setdefault(key, ({}, threading.Lock()))
@dataclasses.dataclass(frozen=True)
class SendCheck:
    """What :meth:`CreditLedger.send_check` found.

    Attributes:
        holder: The SKU's claim (None: nobody holds it).
        reusable: A completed attempt with the fingerprint: reuse it, pay nothing.
        unsettled: Other runs' pending or unknown attempts with the fingerprint: settle them first.
    """

    holder: Claim | None
    reusable: AttemptRecord | None
    unsettled: list[AttemptRecord]


def _external_event(job_row: Mapping[str, Any], origin: str) -> LedgerEvent:
    """The event recording a job no attempt owns, under its job-derived attempt id."""
    fields = job_row_fields(job_row)
    fields["origin"] = origin
    attempt_id = external_attempt_id(fields["job_id"])
    event = LedgerEvent.create(attempt_id, "external", fields)
    # Content-derived id: the sensor re-seeing an unchanged job adds nothing to the journal.
    content = "|".join(f"{k}={v}" for k, v in sorted(event.fields.items()))
    event_id = str(uuid.uuid5(_EVENT_ID_NAMESPACE, f"{attempt_id}|{content}"))
    return dataclasses.replace(event, event_id=event_id)

__all__ = ["CreditLedger"]
