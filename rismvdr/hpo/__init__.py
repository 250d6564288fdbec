"""Hyperparameter search of the Stage-1 backbone with Optuna (`rismvdr hpo`, `rismvdr hpo2`).

`space` (space files: load, check, sample, apply), `trial` (one trial: settings, shortened
training, surrogate or end-to-end objective, pruning), `storage` (journal files and SQL
databases with heartbeats), `study` (running studies in one or several processes, the
two-stage search, export of the best trial). The public names are re-exported here:
`from rismvdr import hpo; hpo.run_study(...)`.
"""
from rismvdr.hpo.space import LOSS_SCALE, apply_params, check_space, load_space, suggest_params
from rismvdr.hpo.storage import (
    GRACE_PERIOD_S,
    HEARTBEAT_INTERVAL_S,
    JOURNAL_NAME,
    check_workers,
    default_storage,
    last_heartbeat,
    make_storage,
)
from rismvdr.hpo.study import (
    PRUNERS,
    TRIAL_COLUMNS,
    export_best,
    fail_dead_trials,
    format_rerank,
    open_study,
    print_trial,
    rerank,
    run_hpo2,
    run_study,
    trials_table,
    write_trials_csv,
)
from rismvdr.hpo.trial import (
    WORKER_HOST,
    WORKER_PID,
    BudgetExhausted,
    ObjectiveSettings,
    TrialFailed,
    e2e_metrics,
    make_settings,
    objective,
    surrogate_score,
    trial_config,
)

__all__ = [
    # space
    "LOSS_SCALE", "load_space", "check_space", "suggest_params", "apply_params",
    # one trial
    "WORKER_HOST", "WORKER_PID", "ObjectiveSettings", "BudgetExhausted", "TrialFailed", "make_settings", "trial_config", "surrogate_score",
    "e2e_metrics", "objective",
    # storage
    "JOURNAL_NAME", "HEARTBEAT_INTERVAL_S", "GRACE_PERIOD_S", "default_storage", "make_storage", "check_workers",
    "last_heartbeat",
    # studies
    "PRUNERS", "open_study", "fail_dead_trials", "run_study", "run_hpo2", "rerank", "format_rerank", "export_best", "print_trial",
    "TRIAL_COLUMNS", "trials_table", "write_trials_csv",
]
