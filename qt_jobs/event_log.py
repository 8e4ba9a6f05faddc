"""Batched event-log storage for the embedded (SQLite) instance, and the batching settings every process needs.

Dagster writes one ``ASSET_MATERIALIZATION`` event per partition, even in a single-run backfill; stock
``SqliteEventLogStorage`` stores each one with a fresh engine, connection and transaction per shard (run shard,
then the cross-run index shard): 10-25 ms per partition, most of a backfill. Dagster hands such a step's events
to ``store_event_batch`` when ``DAGSTER_EVENT_BATCH_SIZE`` > 0, but SQLite inherits a loop over ``store_event``.

:class:`BatchedSqliteEventLogStorage` stores a batch with Dagster's own ``store_event`` code, event by event and
in order, on two connections held open for the whole batch (one transaction on the run shard, one on the index
shard), so every row is exactly the row stock storage writes; only the connection churn goes.

Crash safety (the two shards are separate SQLite files; no transaction spans both):

* The run shard commits first, then the index shard. A batch holds its run's lock (``flock`` on one of 64
  files in ``<base_dir>/.qtos_batches/``) and leaves a marker ``<run_id>.<uuid>.pending`` there, removed after
  the index commit. A process killed between the two commits leaves the marker (and its lock is released by the
  kernel): the next process that opens the storage (or stores a batch) takes the run's lock and repairs that run, storing the index-side rows of every asset/check event of the
  run shard that the index lacks (stock code again, with the run-shard insert sent to a scratch database), so the
  run log and the asset index never stay apart.
* Nothing raises after the run shard committed: an index failure there is repaired at once (or at the next
  start), instead of letting Dagster's fallback store every event a second time.
* A failure before the run-shard commit rolls both back and raises; Dagster then stores the events one by one.

On a Dagster version that ``tests/qt_jobs/test_event_log.py`` has not validated, batches take the stock path
(with a warning): the batch path reuses stock code but pins its connections, which an upgrade could change.

:func:`ensure_batching_env` sets ``DAGSTER_EVENT_BATCH_SIZE`` and ``DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS``
(one planned event per asset instead of one per partition) unless already set. Dagster reads both from the
environment of the process that writes events, at write time; both storages here call it when they are built,
which happens in every process that opens the instance (CLI, ``dagster dev``, daemon, run and step workers,
tests), so the settings reach all of them without each entry point exporting them.
"""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import threading
import uuid
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import dagster as dg
import sqlalchemy as db
from dagster._config import Field, StringSource
from dagster._core.events import ASSET_CHECK_EVENTS, ASSET_EVENTS, BATCH_WRITABLE_EVENTS
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.event_log.schema import SqlEventLogStorageMetadata, SqlEventLogStorageTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData
from dagster_shared.serdes import deserialize_value
from sqlalchemy.pool import NullPool, StaticPool

log = logging.getLogger(__name__)

# Dagster versions whose store_event path the contract test (tests/qt_jobs/test_event_log.py) compared table by
# table against stock storage. Add a version only after that test passes on it.
VALIDATED_DAGSTER_VERSIONS = frozenset({"1.13.27"})
DEFAULT_BATCH_SIZE = "10000"
MARKER_DIR = ".qtos_batches"
LOCK_STRIPES = 64
# event types the SQLite storage mirrors into the index shard and that a batch can hold
_MIRRORED = {t.value for t in (ASSET_EVENTS | ASSET_CHECK_EVENTS) & BATCH_WRITABLE_EVENTS}
# test hook: die (SIGKILL) at a named point of a batch, to prove the repair
_CRASH_ENV = "QTOS_EVENT_LOG_CRASH_AT"


def ensure_batching_env() -> None:
    """Batch partition events (Dagster reads the size per write) and emit one planned event per asset."""
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", DEFAULT_BATCH_SIZE)
    os.environ.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "true")


def batching_validated(version: str | None = None) -> bool:
    return (version or dg.__version__) in VALIDATED_DAGSTER_VERSIONS


_crash_counts: Counter = Counter()


def _crash_point(name: str) -> None:
    """``QTOS_EVENT_LOG_CRASH_AT=<point>[:<n>]`` kills this process (SIGKILL) the n-th time (default 1st) a
    batch reaches ``point``; unset, nothing happens. Used by the crash tests only."""
    spec = os.environ.get(_CRASH_ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point == name:
        _crash_counts[name] += 1
        if _crash_counts[name] == int(nth or 1):
            os.kill(os.getpid(), 9)


class BatchedSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's run-sharded SQLite event log with a real ``store_event_batch`` (see the module docstring).

    ``dagster.yaml``::

        event_log_storage:
          module: qt_jobs.event_log
          class: BatchedSqliteEventLogStorage

    ``base_dir`` defaults to stock's ``<instance folder>/history/runs``, so an existing instance keeps its history.
    """

    def __init__(self, base_dir: str | None = None, inst_data: ConfigurableClassData | None = None):
        ensure_batching_env()
        self._inst_data = inst_data
        self._pins = threading.local()
        self._known_tables: set[str] = set()
        self.stats: Counter = Counter()  # batches / events stored through the batch path, index rows repaired
        self.batching = batching_validated()
        if not self.batching:
            warnings.warn(f"QTOS batched event storage is validated for Dagster {sorted(VALIDATED_DAGSTER_VERSIONS)}, "
                          f"not {dg.__version__}: storing events one by one (stock path). Run "
                          "tests/qt_jobs/test_event_log.py on this version, then add it to VALIDATED_DAGSTER_VERSIONS.",
                          stacklevel=2)
        if base_dir is not None:
            self._open_at(base_dir)

    def _open_at(self, base_dir: str) -> None:
        super().__init__(base_dir, inst_data=self._inst_data)
        self.repair_interrupted_batches()

    def register_instance(self, instance) -> None:
        # Without base_dir the log lives where stock puts it, under the instance's own folder (the one its
        # dagster.yaml is in), which the instance hands over right after building its storages.
        if not hasattr(self, "_base_dir"):
            self._open_at(os.path.join(instance.root_directory, "history", "runs", ""))
        super().register_instance(instance)

    @classmethod
    def config_type(cls):
        return {"base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, **config_value)

    # ---- connections: held open for a batch, per thread -------------------------------------------------
    @contextmanager
    def _connect(self, shard: str) -> Iterator[db.engine.Connection]:
        pinned = getattr(self._pins, "conns", None)
        if pinned is None:
            with super()._connect(shard) as conn:
                yield conn
            return
        if shard not in pinned:  # never reached by stock store_event; refuse rather than deadlock on _db_lock
            raise RuntimeError(f"event batch touched shard {shard!r} outside {sorted(pinned)}")
        yield pinned[shard]

    def _store_asset_event(self, conn, event: EventLogEntry, event_id: int) -> None:
        # Stock store_event updates the asset's row in asset_keys once per event (an insert that fails, then an
        # update). Which columns an event sets depends only on its type, so the row a batch leaves equals the
        # one left by the last event of each type, applied in order: those few are applied at commit.
        deferred = getattr(self._pins, "asset_events", None)
        if deferred is None:
            return super()._store_asset_event(conn, event, event_id)
        deferred.append((event, event_id))

    def _flush_asset_events(self, conn) -> None:
        deferred, self._pins.asset_events = self._pins.asset_events, []
        last: dict[tuple[str, object], int] = {}
        for i, (event, _) in enumerate(deferred):
            if event.dagster_event and event.dagster_event.asset_key:
                last[(event.dagster_event.asset_key.to_string(), event.dagster_event_type)] = i
        for i in sorted(last.values()):
            super()._store_asset_event(conn, *deferred[i])

    def has_table(self, table_name: str) -> bool:
        # stock store_event asks once per event (a new engine each time); tables are never dropped at run time
        if table_name in self._known_tables:
            return True
        found = super().has_table(table_name)
        if found:
            self._known_tables.add(table_name)
        return found

    def _open(self, shard: str):
        engine = create_engine(self.conn_string_for_shard(shard), poolclass=NullPool,
                               connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        conn = engine.connect()
        return engine, conn, conn.begin()

    @contextmanager
    def _pinned(self, run_id: str, scratch_run_shard: bool = False):
        """Hold one transaction on the run shard (or a scratch in-memory database) and one on the index shard;
        every ``_connect`` of this thread gets them. Yields a ``commit(before_index)`` function: the run shard
        commits, then ``before_index()`` runs, then the index shard commits. Rolls back whatever is uncommitted
        on an error."""
        with self._db_lock:
            opened = []
            try:
                if scratch_run_shard:
                    engine = db.create_engine("sqlite://", poolclass=StaticPool)
                    SqlEventLogStorageMetadata.create_all(engine)
                    run_conn = engine.connect()
                    opened.append((engine, run_conn, run_conn.begin()))
                else:
                    opened.append(self._open(run_id))
                opened.append(self._open(INDEX_SHARD_NAME))
                (_, run_conn, run_tx), (_, index_conn, index_tx) = opened
                self._pins.conns = {run_id: run_conn, INDEX_SHARD_NAME: index_conn}
                self._pins.asset_events = []

                def commit(before_index=lambda: None):
                    self._flush_asset_events(index_conn)
                    run_tx.commit()
                    self._pins.run_committed = True
                    before_index()
                    index_tx.commit()

                yield commit
            finally:
                self._pins.conns = self._pins.asset_events = None
                for engine, conn, tx in reversed(opened):
                    try:
                        if tx.is_active:
                            tx.rollback()
                        conn.close()
                    finally:
                        engine.dispose()

    # ---- batches ------------------------------------------------------------------------------------------
    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        run_ids = {e.run_id for e in events}
        if (not self.batching or len(events) < 2 or len(run_ids) != 1 or "" in run_ids or None in run_ids
                or any(not e.is_dagster_event or e.dagster_event_type not in BATCH_WRITABLE_EVENTS for e in events)):
            return super().store_event_batch(events)  # stock: one store_event per event
        run_id = events[0].run_id
        self.repair_interrupted_batches()
        marker = self._marker(run_id)
        self._pins.run_committed = False
        try:
            with self._pinned(run_id) as commit:
                for event in events:
                    SqliteEventLogStorage.store_event(self, event)  # stock rows, on the pinned connections
                _crash_point("before_run_commit")
                commit(before_index=lambda: _crash_point("after_run_commit"))
        except Exception:
            if self._pins.run_committed:  # the run shard committed, the index did not
                log.warning("event batch: index commit failed after the run shard committed; repairing run %s",
                            run_id)
                repaired = True
                try:
                    self._repair_run(run_id)
                except Exception:  # the marker stays: the next start repairs
                    repaired = False
                    log.exception("event batch: repair of run %s deferred", run_id)
                self._release(marker, remove=repaired)
                return
            self._release(marker)
            raise
        except BaseException:  # interrupted: a half-stored batch keeps its marker for the next start
            self._release(marker, remove=not self._pins.run_committed)
            raise
        _crash_point("after_index_commit")
        self._release(marker)
        self.stats.update(batches=1, events=len(events))

    # ---- markers and repair -------------------------------------------------------------------------------
    def _marker_dir(self) -> str:
        return os.path.join(self._base_dir, MARKER_DIR)

    def _run_lock(self, run_id: str) -> int:
        """An exclusive ``flock`` shared by a run's batches and its repair, so a repair never reads a batch
        half-way (64 lock files in all, by hash of the run id). Returns the locked descriptor."""
        os.makedirs(self._marker_dir(), exist_ok=True)
        stripe = zlib.crc32(run_id.encode()) % LOCK_STRIPES
        fd = os.open(os.path.join(self._marker_dir(), f"lock.{stripe:02d}"), os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _marker(self, run_id: str):
        """Take the run's lock, then leave a marker that outlives the process if it dies mid-batch."""
        fd = self._run_lock(run_id)
        path = os.path.join(self._marker_dir(), f"{run_id}.{uuid.uuid4().hex}.pending")
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o644))
        return path, fd

    @staticmethod
    def _release(marker, remove: bool = True) -> None:
        path, fd = marker
        try:
            if remove:
                os.unlink(path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)  # releases the run's lock; a marker left behind is repaired by the next start

    def repair_interrupted_batches(self) -> list[str]:
        """Complete the index side of batches whose process died between the two commits. Returns the runs
        repaired. A batch in progress holds its run's lock: the repair waits for it, then finds its marker gone."""
        repaired = []
        for path in sorted(glob.glob(os.path.join(self._marker_dir(), "*.pending"))):
            run_id = os.path.basename(path).split(".")[0]
            fd = self._run_lock(run_id)
            try:
                if not os.path.exists(path):  # its batch finished, or another process repaired it
                    continue
                if self._repair_run(run_id):
                    repaired.append(run_id)
                os.unlink(path)
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)
        return repaired

    def _repair_run(self, run_id: str) -> int:
        """Store the index side of every mirrored event of the run shard that the index lacks (matching the
        serialised event, with multiplicity). Returns how many were repaired."""
        t = SqlEventLogStorageTable.c
        query = db.select(t.event).where(t.run_id == run_id, t.dagster_event_type.in_(sorted(_MIRRORED))).order_by(t.id)
        if not os.path.exists(self.path_for_shard(run_id)):
            return 0
        with super()._connect(run_id) as conn:
            in_run = [r[0] for r in conn.execute(query)]
        with super()._connect(INDEX_SHARD_NAME) as conn:
            in_index = Counter(r[0] for r in conn.execute(query))
        missing = []
        for raw in in_run:
            if in_index[raw]:
                in_index[raw] -= 1
            else:
                missing.append(raw)
        if not missing:
            return 0
        with self._pinned(run_id, scratch_run_shard=True) as commit:
            for raw in missing:
                SqliteEventLogStorage.store_event(self, deserialize_value(raw, EventLogEntry))
            commit()
        self.stats.update(repaired=len(missing))
        log.warning("event batch: repaired %d index rows of run %s", len(missing), run_id)
        return len(missing)


