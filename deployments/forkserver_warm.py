"""Work every served run would repeat, done once in the fork server that runs are forked from.

Imported only through ``deployments.runner.PRELOAD``: importing this module *does* the work (the
exception to "nothing runs at import", and the reason it is a module of its own). A forked run
inherits what it computed:

- which distribution provides which top-level package: MLflow scans every installed
  distribution's files to check a logged model's pip requirements against the environment,
  and ctflows to name the estimator's distribution; about 0.9 s each, per process.
"""

from __future__ import annotations

from mlflow.utils import requirements_utils

from tasks.estimators import distributions_of_packages

requirements_utils._init_modules_to_packages_map()  # MLflow keeps it in a module global
distributions_of_packages()
