"""Studies: validated YAML configs, the grid, executors and the SQLite store."""

from widthlab.study.config import StudyConfig, load_config
from widthlab.study.runner import StudyOutcome, plan_runs, run_study
from widthlab.study.runs import RunSpec, execute_run
from widthlab.study.store import Results, Store, export_csv, load_results

__all__ = ["Results", "RunSpec", "Store", "StudyConfig", "StudyOutcome", "execute_run", "export_csv", "load_config",
           "load_results", "plan_runs", "run_study"]
