"""Study runner: configuration resolution (``config``), the stage cache
(``cache``) and stage orchestration (``orchestrate``). CLI: ``python -m sgdbayes.study``."""
from .config import ConfigError, StudyDecl, config_hash, list_studies, load_study, resolve_config
from .orchestrate import RunResult, Stage, StageContext, run_study

__all__ = [
    "ConfigError", "StudyDecl", "config_hash", "list_studies", "load_study", "resolve_config",
    "RunResult", "Stage", "StageContext", "run_study",
]
