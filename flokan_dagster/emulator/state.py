"""The emulator's durable state: one SQLite file (WAL mode) holding workspaces, API keys,
presets, images (bytes included) and jobs, so that everything survives a restart.

One connection is shared by the event loop and the rendering threads; a threading lock guards
each short statement or transaction and is never held while a job's simulated latency runs.

Example:
    >>> import tempfile, pathlib
    >>> store = Store(pathlib.Path(tempfile.mkdtemp()) / "state.db")
    >>> ws = store.create_workspace("acme", credits=100)
    >>> store.workspace(ws)["credits"]
    100
    >>> store.close()
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workspaces (
    workspace_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    credits INTEGER NOT NULL,
    credits_deducted INTEGER NOT NULL DEFAULT 0,
    byok_in_plan INTEGER NOT NULL,
    rate_limit_per_minute INTEGER NOT NULL,
    byok_providers TEXT NOT NULL,
    created_at TEXT NOT NULL,
    provider_max_concurrent INTEGER
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces(workspace_id),
    scopes TEXT NOT NULL,
    creator_has_permission INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS presets (
    preset_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    workspace_id TEXT,
    name TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    image_id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    origin TEXT NOT NULL,
    file_name TEXT,
    mime_type TEXT NOT NULL,
    file_size INTEGER,
    created_at TEXT NOT NULL,
    uploaded_at TEXT,
    data BLOB
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    workspace_id TEXT NOT NULL,
    status TEXT NOT NULL,
    prompt TEXT NOT NULL,
    model_tier TEXT NOT NULL,
    provider TEXT NOT NULL,
    provider_used TEXT NOT NULL,
    image_id TEXT,
    image_url TEXT,
    style_id TEXT,
    character_id TEXT,
    result_image_id TEXT,
    credits_consumed INTEGER NOT NULL DEFAULT 0,
    processing_ms INTEGER,
    error TEXT,
    created_at TEXT NOT NULL,
    completed_at TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_workspace ON jobs (workspace_id, created_at DESC, seq DESC);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (workspace_id, status, created_at DESC, seq DESC);
"""

_JOB_COLUMNS = (
    "job_id, workspace_id, status, prompt, model_tier, provider, provider_used, image_id, image_url, "
    "style_id, character_id, result_image_id, credits_consumed, processing_ms, error, created_at, completed_at"
)


def iso_now() -> str:
    """Return the current UTC time as ISO 8601 with milliseconds and ``Z``."""
    return iso(datetime.now(UTC))


def iso(moment: datetime) -> str:
    """Format an aware datetime as ``2026-04-12T09:00:00.000Z``."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    """Parse an ISO 8601 timestamp (``Z`` or offset; naive means UTC)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def hash_key(api_key: str) -> str:
    """Return the stored form of an API key (only hashes are kept)."""
    return hashlib.sha256(api_key.encode()).hexdigest()


class Store:
    """SQLite-backed state of every workspace, key, preset, image and job.

    Args:
        path: The database file; its directory is created if missing.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            columns = {row["name"] for row in self._db.execute("PRAGMA table_info(workspaces)")}
            if "provider_max_concurrent" not in columns:  # a state file from before the provider cap
                self._db.execute("ALTER TABLE workspaces ADD COLUMN provider_max_concurrent INTEGER")
            # A job that was running when the previous process stopped can never finish now.
            self._db.execute(
                "UPDATE jobs SET status='failed', error=?, completed_at=? WHERE status IN ('pending','processing')",
                ("emulator stopped while the job was running", iso_now()),
            )

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def _one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchone()

    def _run(self, sql: str, params: Iterable[Any] = ()) -> int:
        with self._lock:
            return self._db.execute(sql, tuple(params)).rowcount

    # -- meta ---------------------------------------------------------------------------------

    def signing_secret(self) -> bytes:
        """Return the HMAC secret for presigned URLs, created once and kept across restarts."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('signing_secret', ?)", (secrets.token_hex(32),)
            )
            row = self._db.execute("SELECT value FROM meta WHERE key='signing_secret'").fetchone()
        return bytes.fromhex(row["value"])

    # -- workspaces and keys ------------------------------------------------------------------

    def create_workspace(
        self,
        name: str,
        credits: int = 0,
        byok_in_plan: bool = False,
        rate_limit_per_minute: int = 60,
        byok_providers: Mapping[str, Mapping[str, Any]] | None = None,
        workspace_id: str | None = None,
        provider_max_concurrent: int | None = None,
    ) -> str:
        """Create a workspace and return its id.

        ``byok_providers`` maps a provider name to ``{"enabled": bool}``; a listed provider is
        configured, and usable when also enabled and the plan includes BYOK.
        ``provider_max_concurrent`` caps the workspace's ``/process`` calls in flight at the image
        provider (None: no cap); one more is answered 429.
        """
        workspace_id = workspace_id or str(uuid.uuid4())
        providers = {name_: {"enabled": bool(v.get("enabled", True))} for name_, v in (byok_providers or {}).items()}
        self._run(
            "INSERT INTO workspaces (workspace_id, name, credits, byok_in_plan, rate_limit_per_minute, "
            "byok_providers, created_at, provider_max_concurrent) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (workspace_id, name, credits, int(byok_in_plan), rate_limit_per_minute, json.dumps(providers), iso_now(),
             provider_max_concurrent),
        )
        return workspace_id

    def update_workspace(self, workspace_id: str, fields: Mapping[str, Any]) -> bool:
        """Apply a partial update (name, credits, byok_in_plan, rate_limit_per_minute,
        byok_providers, provider_max_concurrent); return False when the workspace does not exist."""
        sets: list[str] = []
        params: list[Any] = []
        columns = ("name", "credits", "byok_in_plan", "rate_limit_per_minute", "byok_providers", "provider_max_concurrent")
        for column in columns:
            if column not in fields:
                continue
            value = fields[column]
            if column == "byok_providers":
                value = json.dumps({k: {"enabled": bool(v.get("enabled", True))} for k, v in value.items()})
            elif column == "byok_in_plan":
                value = int(bool(value))
            sets.append(f"{column} = ?")
            params.append(value)
        if not sets:
            return self.workspace(workspace_id) is not None
        return self._run(f"UPDATE workspaces SET {', '.join(sets)} WHERE workspace_id = ?", (*params, workspace_id)) == 1

    def workspace(self, workspace_id: str) -> dict[str, Any] | None:
        """Return a workspace as a dict (with job counts), or None."""
        row = self._one("SELECT * FROM workspaces WHERE workspace_id = ?", (workspace_id,))
        if row is None:
            return None
        with self._lock:
            counts = self._db.execute(
                "SELECT status, COUNT(*) AS n FROM jobs WHERE workspace_id = ? GROUP BY status", (workspace_id,)
            ).fetchall()
        by_status = {r["status"]: r["n"] for r in counts}
        return {
            "workspace_id": row["workspace_id"],
            "name": row["name"],
            "credits": row["credits"],
            "credits_deducted": row["credits_deducted"],
            "byok_in_plan": bool(row["byok_in_plan"]),
            "rate_limit_per_minute": row["rate_limit_per_minute"],
            "provider_max_concurrent": row["provider_max_concurrent"],
            "byok_providers": json.loads(row["byok_providers"]),
            "jobs": sum(by_status.values()),
            "jobs_by_status": by_status,
            "created_at": row["created_at"],
        }

    def create_key(
        self, workspace_id: str, scopes: Iterable[str] = ("image_editor",), creator_has_permission: bool = True,
        api_key: str | None = None,
    ) -> str:
        """Mint an API key for a workspace and return it (only its hash is stored)."""
        api_key = api_key or f"flk_{secrets.token_hex(16)}"
        self._run(
            "INSERT OR IGNORE INTO api_keys (key_hash, workspace_id, scopes, creator_has_permission, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (hash_key(api_key), workspace_id, json.dumps(list(scopes)), int(creator_has_permission), iso_now()),
        )
        return api_key

    def key_owner(self, api_key: str) -> dict[str, Any] | None:
        """Return the key's grants and its workspace's plan, or None for an unknown key."""
        row = self._one(
            "SELECT k.scopes, k.creator_has_permission, w.workspace_id, w.credits, w.byok_in_plan, "
            "w.rate_limit_per_minute, w.provider_max_concurrent, w.byok_providers FROM api_keys k JOIN workspaces w USING (workspace_id) "
            "WHERE k.key_hash = ?",
            (hash_key(api_key),),
        )
        if row is None:
            return None
        return {
            "workspace_id": row["workspace_id"],
            "scopes": json.loads(row["scopes"]),
            "creator_has_permission": bool(row["creator_has_permission"]),
            "credits": row["credits"],
            "byok_in_plan": bool(row["byok_in_plan"]),
            "rate_limit_per_minute": row["rate_limit_per_minute"],
            "provider_max_concurrent": row["provider_max_concurrent"],
            "byok_providers": json.loads(row["byok_providers"]),
        }

    def credits(self, workspace_id: str) -> int:
        """Return the workspace's current credit balance."""
        row = self._one("SELECT credits FROM workspaces WHERE workspace_id = ?", (workspace_id,))
        return row["credits"] if row else 0

    # -- presets ------------------------------------------------------------------------------

    def create_preset(self, kind: str, workspace_id: str | None, name: str, preset_id: str | None = None) -> str:
        """Create a ``style`` or ``character`` preset (``workspace_id=None``: a system preset)."""
        preset_id = preset_id or str(uuid.uuid4())
        self._run(
            "INSERT OR IGNORE INTO presets (preset_id, kind, workspace_id, name) VALUES (?, ?, ?, ?)",
            (preset_id, kind, workspace_id, name),
        )
        return preset_id

    def preset_visible(self, kind: str, preset_id: str, workspace_id: str) -> bool:
        """True when the preset exists and belongs to the workspace or to the system."""
        row = self._one(
            "SELECT 1 FROM presets WHERE preset_id = ? AND kind = ? AND (workspace_id = ? OR workspace_id IS NULL)",
            (preset_id, kind, workspace_id),
        )
        return row is not None

    # -- images -------------------------------------------------------------------------------

    def create_upload(self, workspace_id: str, file_name: str, mime_type: str, file_size: int | None) -> str:
        """Register an image awaiting its bytes (the presigned PUT) and return its id."""
        image_id = str(uuid.uuid4())
        self._run(
            "INSERT INTO images (image_id, workspace_id, origin, file_name, mime_type, file_size, created_at) "
            "VALUES (?, ?, 'upload', ?, ?, ?, ?)",
            (image_id, workspace_id, file_name, mime_type, file_size, iso_now()),
        )
        return image_id

    def image(self, image_id: str) -> dict[str, Any] | None:
        """Return an image's metadata (without bytes) and whether its bytes are present."""
        row = self._one(
            "SELECT image_id, workspace_id, origin, file_name, mime_type, file_size, created_at, uploaded_at, "
            "data IS NOT NULL AS has_data FROM images WHERE image_id = ?",
            (image_id,),
        )
        return dict(row) if row else None

    def store_upload(self, image_id: str, data: bytes) -> None:
        """Keep the bytes PUT to a presigned URL (a second PUT replaces them)."""
        self._run(
            "UPDATE images SET data = ?, file_size = ?, uploaded_at = ? WHERE image_id = ?",
            (data, len(data), iso_now(), image_id),
        )

    def image_bytes(self, image_id: str) -> bytes | None:
        """Return an image's bytes, or None when absent or not uploaded yet."""
        row = self._one("SELECT data FROM images WHERE image_id = ?", (image_id,))
        return bytes(row["data"]) if row and row["data"] is not None else None

    # -- jobs ---------------------------------------------------------------------------------

    def insert_job(self, job: Mapping[str, Any]) -> None:
        """Insert a new job row (keys are the job columns)."""
        columns = [c.strip() for c in _JOB_COLUMNS.split(",")]
        self._run(
            f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({', '.join('?' for _ in columns)})",
            tuple(job.get(c) for c in columns),
        )

    def set_job_status(self, job_id: str, status: str) -> None:
        """Move a job to ``status`` (pending -> processing)."""
        self._run("UPDATE jobs SET status = ? WHERE job_id = ?", (status, job_id))

    def complete_job(
        self, job_id: str, workspace_id: str, cost: int, png: bytes, processing_ms: int, completed_at: str
    ) -> str | None:
        """Charge ``cost`` and mark the job completed with its result, in one transaction.

        Returns the result image id, or None when the balance no longer covers the cost (the job
        is then marked failed, nothing is charged: the balance never goes negative).
        """
        result_image_id = str(uuid.uuid4())
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if cost > 0:
                    charged = self._db.execute(
                        "UPDATE workspaces SET credits = credits - ?, credits_deducted = credits_deducted + ? "
                        "WHERE workspace_id = ? AND credits >= ?",
                        (cost, cost, workspace_id, cost),
                    ).rowcount
                    if not charged:
                        self._db.execute(
                            "UPDATE jobs SET status = 'failed', error = ?, processing_ms = ?, completed_at = ? "
                            "WHERE job_id = ?",
                            ("insufficient AI credits at completion", processing_ms, completed_at, job_id),
                        )
                        self._db.execute("COMMIT")
                        return None
                self._db.execute(
                    "INSERT INTO images (image_id, workspace_id, origin, file_name, mime_type, file_size, created_at, "
                    "uploaded_at, data) VALUES (?, ?, 'result', ?, 'image/png', ?, ?, ?, ?)",
                    (result_image_id, workspace_id, f"{job_id}.png", len(png), completed_at, completed_at, png),
                )
                self._db.execute(
                    "UPDATE jobs SET status = 'completed', result_image_id = ?, credits_consumed = ?, "
                    "processing_ms = ?, completed_at = ? WHERE job_id = ?",
                    (result_image_id, cost, processing_ms, completed_at, job_id),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return result_image_id

    def fail_job(self, job_id: str, error: str, processing_ms: int, completed_at: str) -> None:
        """Mark a job failed with ``error``; nothing is charged."""
        self._run(
            "UPDATE jobs SET status = 'failed', error = ?, processing_ms = ?, completed_at = ? WHERE job_id = ?",
            (error, processing_ms, completed_at, job_id),
        )

    def job(self, workspace_id: str, job_id: str) -> dict[str, Any] | None:
        """Return one job of the workspace, or None (another workspace's job is not found)."""
        row = self._one(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ? AND workspace_id = ?", (job_id, workspace_id))
        return dict(row) if row else None

    def list_jobs(
        self, workspace_id: str, page: int, per_page: int, status: str | None
    ) -> tuple[list[dict[str, Any]], int]:
        """Return one page of the workspace's jobs, newest first, and the total count."""
        where = "workspace_id = ?" + (" AND status = ?" if status else "")
        params: tuple[Any, ...] = (workspace_id, status) if status else (workspace_id,)
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM jobs WHERE {where}", params).fetchone()[0]
            rows = self._db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {where} ORDER BY created_at DESC, seq DESC LIMIT ? OFFSET ?",
                (*params, per_page, (page - 1) * per_page),
            ).fetchall()
        return [dict(r) for r in rows], total

    def bulk_insert_jobs(
        self, workspace_id: str, count: int, status: str, start: datetime, step_ms: int, costs: Mapping[str, int]
    ) -> int:
        """Insert ``count`` synthetic jobs (history), ``step_ms`` apart from ``start``; return count."""
        tiers = list(costs)
        rows = []
        for i in range(count):
            created = start + timedelta(milliseconds=i * step_ms)
            tier = tiers[i % len(tiers)]
            finished = status in ("completed", "failed")
            rows.append(
                {
                    "job_id": str(uuid.uuid4()),
                    "workspace_id": workspace_id,
                    "status": status,
                    "prompt": f"synthetic job {i}",
                    "model_tier": tier,
                    "provider": "platform",
                    "provider_used": "system",
                    "result_image_id": str(uuid.uuid4()) if status == "completed" else None,
                    "credits_consumed": costs[tier] if status == "completed" else 0,
                    "processing_ms": 1000 if finished else None,
                    "error": "synthetic failure" if status == "failed" else None,
                    "created_at": iso(created),
                    "completed_at": iso(created + timedelta(milliseconds=1000)) if finished else None,
                }
            )
        columns = [c.strip() for c in _JOB_COLUMNS.split(",")]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({', '.join('?' for _ in columns)})",
                [tuple(r.get(c) for c in columns) for r in rows],
            )
            self._db.execute("COMMIT")
        return count

    def result_job(self, workspace_id: str, job_id: str) -> dict[str, Any] | None:
        """Return the completed job behind a result URL, or None."""
        row = self._one(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ? AND workspace_id = ? AND status = 'completed'",
            (job_id, workspace_id),
        )
        return dict(row) if row else None
