"""Where a study lives: journal files or SQL databases, with heartbeats for stale trials.

By default a study lives in a journal file, `<workdir>/hpo.journal`, which several processes
on one host share (`--workers K`, or the same command started several times). `--storage`
takes another journal file path or any SQLAlchemy URL (`postgresql+psycopg2://user@host/db`
for many machines; never `sqlite:` with several workers: `check_workers`). A storage that
cannot be opened (an unknown dialect, a missing driver, an unreachable database, a file that is
not a journal) is a one-line `ValueError` naming the flag; `check_storage` asks before anything
is written.

Stale trials. A worker records a heartbeat for its running trial every `heartbeat_interval`
seconds; before a trial starts, every worker fails the study's RUNNING trials whose last
heartbeat is older than `grace_period` seconds (`optuna.storages.fail_stale_trials`), so a
crashed worker's trial does not block the study (a rerun on the same host does not wait for
that: `rismvdr.hpo.study.fail_dead_trials` fails at once a trial whose worker process is gone).
On an RDB URL this is `RDBStorage`'s own
heartbeat; Optuna 5's `JournalStorage` has none, so journal files use `JournalStorage`
extended with the same `BaseHeartbeat` interface (the heartbeat is a trial system attribute).
`BaseHeartbeat` is imported from optuna's private `optuna.storages._heartbeat`: it is the
interface `fail_stale_trials` and optuna's heartbeat thread call, and optuna exports it nowhere
else.

optuna-dashboard can open the journal file: `optuna-dashboard <workdir>/hpo.journal`.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages._heartbeat import BaseHeartbeat  # the interface fail_stale_trials uses
from optuna.trial import TrialState

try:
    from optuna.storages.journal import JournalFileBackend
except ImportError:  # optuna < 4.0
    from optuna.storages import JournalFileStorage as JournalFileBackend

__all__ = ["JOURNAL_NAME", "HEARTBEAT_INTERVAL_S", "GRACE_PERIOD_S", "default_storage", "make_storage",
           "check_storage", "check_workers", "last_heartbeat"]

#: File name of the default journal storage inside the run directory.
JOURNAL_NAME = "hpo.journal"
#: Default seconds between heartbeats of a running trial.
HEARTBEAT_INTERVAL_S = 60
#: Default seconds without a heartbeat after which a RUNNING trial is failed as stale.
GRACE_PERIOD_S = 300
_HEARTBEAT_ATTR = "rismvdr:heartbeat"
_RECORD_START = b'{"op_code":'  # how every line Optuna writes to a journal file begins


class _HeartbeatJournalStorage(optuna.storages.JournalStorage, BaseHeartbeat):
    """`JournalStorage` with `RDBStorage`'s heartbeat interface: the last heartbeat of a
    running trial is a system attribute (wall-clock seconds), so optuna's own heartbeat thread
    and `fail_stale_trials` work on journal files."""

    def __init__(self, backend, *, heartbeat_interval: int, grace_period: int):
        super().__init__(backend)
        self._heartbeat_interval = int(heartbeat_interval)
        self._grace_period = int(grace_period)

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, _HEARTBEAT_ATTR, time.time())
        except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
            pass  # the trial has just finished (or was failed as stale by another worker)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()  # (FrozenTrial keeps the storage's id private; optuna's RDB code uses it too)
        return [t._trial_id for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
                if now - t.system_attrs.get(_HEARTBEAT_ATTR, now) > self._grace_period]

    def get_heartbeat_interval(self) -> int:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return None

    def get_failed_trial_callback(self):  # optuna < 4.9 spelling of the same hook
        return None


def last_heartbeat(trial: optuna.trial.FrozenTrial) -> float | None:
    """Wall-clock time (s) of a running trial's last heartbeat on a journal file; None where the
    storage keeps it elsewhere (an RDB URL) or there was none yet."""
    value = trial.system_attrs.get(_HEARTBEAT_ATTR)
    return float(value) if isinstance(value, (int, float)) else None


def default_storage(workdir: str | Path) -> str:
    """The default storage: the journal file `<workdir>/hpo.journal`."""
    return str(Path(workdir) / JOURNAL_NAME)


def _is_url(storage: str) -> bool:
    return "://" in storage or storage.startswith("sqlite:")


def _shown_url(url: str) -> str:
    """The URL as an error shows it: its password hidden."""
    from sqlalchemy.engine import make_url  # deferred: SQLAlchemy only for URL storages, as in optuna
    from sqlalchemy.exc import SQLAlchemyError  # deferred: as above

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):  # a URL SQLAlchemy cannot parse is shown as given
        return url


def _open_rdb(url: str, *, heartbeat_interval: int, grace_period: int, flag: str) -> optuna.storages.RDBStorage:
    """`RDBStorage` of `url`; an unknown dialect, a missing driver, an unparsable URL or a
    database that cannot be reached is a one-line `ValueError` naming `flag` and the URL."""
    from sqlalchemy.exc import SQLAlchemyError  # deferred: SQLAlchemy only for URL storages, as in optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=int(heartbeat_interval),
                                              grace_period=int(grace_period))
    except (SQLAlchemyError, ImportError, ValueError) as e:  # ValueError: a URL SQLAlchemy cannot parse
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{flag}: cannot open the database {_shown_url(url)} ({type(e).__name__}: {text})") from None


def _check_journal(path: Path, flag: str) -> None:
    """A journal file that exists is one: every complete line an Optuna journal record (a JSON
    object with an `op_code`); a torn last line (a writer stopped mid-line) is Optuna's to skip.

    Raises:
      ValueError: the path is a directory, unreadable, or not a journal (one line naming
        `flag`, the file and the first bad line).
    """
    if path.is_dir():
        raise ValueError(f"{flag}: {str(path)!r} is a directory, expected a journal file")
    if not path.exists():
        return
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{flag}: {str(path)!r}: unreadable ({e.strerror or type(e).__name__})") from None
    *complete, torn = data.split(b"\n")  # `torn`: after the last newline (empty, or a write cut short)
    for number, line in enumerate(complete, 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not (isinstance(record, dict) and "op_code" in record):
            raise ValueError(f"{flag}: {str(path)!r} is not an Optuna journal file (line {number} is not a "
                             "journal record); give a journal file, a new path or a database URL")
    if torn[:len(_RECORD_START)] != _RECORD_START[:len(torn)]:
        raise ValueError(f"{flag}: {str(path)!r} is not an Optuna journal file (line {len(complete) + 1} is not a "
                         "journal record); give a journal file, a new path or a database URL")


def make_storage(storage: str, *, heartbeat_interval: int = HEARTBEAT_INTERVAL_S, grace_period: int = GRACE_PERIOD_S,
                 create: bool = True, flag: str = "--storage") -> optuna.storages.BaseStorage:
    """A storage with heartbeats from a journal file path or an SQLAlchemy URL.

    Args:
      storage: a journal file path (shared by processes on one host) or an SQLAlchemy URL
        (`postgresql+psycopg2://user@host:port/db`, `mysql+pymysql://...`, `sqlite:///f.db`).
      heartbeat_interval: seconds between heartbeats of a running trial.
      grace_period: a RUNNING trial without a heartbeat for this long is failed as stale.
      create: False: a journal file must exist already (export).
      flag: what errors name as the storage's source (the command-line flag).

    Raises:
      FileNotFoundError: `create=False` and no journal file at `storage`.
      ValueError: a URL that cannot be opened (unknown dialect, missing driver, unreachable
        database), or a path that is a directory or a file that is not a journal (one line
        naming `flag`).
    """
    if int(heartbeat_interval) < 1 or int(grace_period) < 1:
        raise ValueError(f"--heartbeat-s/--grace-s: must be >= 1, got {heartbeat_interval}/{grace_period}")
    if _is_url(storage):
        return _open_rdb(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period, flag=flag)
    path = Path(storage)
    _check_journal(path, flag)
    if not create and not path.is_file():
        raise FileNotFoundError(f"{flag}: no journal file {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return _HeartbeatJournalStorage(JournalFileBackend(str(path)),
                                    heartbeat_interval=heartbeat_interval, grace_period=grace_period)


def check_storage(storage: str, *, flag: str = "--storage") -> None:
    """Check, before anything is written, that `storage` can be opened: a URL's database is
    reached (and closed again); a journal path is a journal file or no file yet (nothing is
    created).

    Raises:
      ValueError: as `make_storage` (one line naming `flag`).
    """
    if _is_url(storage):
        st = _open_rdb(storage, heartbeat_interval=HEARTBEAT_INTERVAL_S, grace_period=GRACE_PERIOD_S, flag=flag)
        st.engine.dispose()
    else:
        _check_journal(Path(storage), flag)


def check_workers(storage: str, workers: int) -> None:
    if int(workers) < 1:
        raise ValueError(f"--workers: must be >= 1, got {workers}")
    if workers > 1 and storage.startswith("sqlite"):
        raise ValueError("--storage: SQLite does not take concurrent writers; with --workers > 1 use the "
                         "default journal file or a server URL (postgresql+psycopg2://...)")
