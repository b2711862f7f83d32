"""Work every served run would repeat, done once in the fork server that runs are forked from.

Imported only through ``deployments.runner.PRELOAD``: importing this module *does* the work (the
exception to "nothing runs at import", and the reason it is a module of its own). A forked run
inherits what it computed:

- which distribution provides which top-level package: MLflow scans every installed
  distribution's files to check a logged model's pip requirements against the environment,
  and ctflows to name the estimator's distribution; about 0.9 s each, per process;
- Pillow's registry of its common image formats (matplotlib's first PNG imports it);
- ``gc.freeze()``, last: the objects of every preloaded module go to the collector's
  permanent generation, so a run's full collections do not walk them again, nor write to
  (and so copy) the pages it shares with the fork server.

The fork server tolerates only ImportError in its preload list, so nothing here may raise
anything else: MLflow's map is computed by a private function, and a release that renames
it must cost each run its 0.9 s again, not stop the fork server from starting.
"""

from __future__ import annotations

import gc
import logging

from mlflow.utils import requirements_utils
from PIL import Image

from tasks.estimators import distributions_of_packages

try:
    requirements_utils._init_modules_to_packages_map()  # MLflow keeps it in a module global
except Exception as exc:  # computed again by each run that logs a model
    logging.getLogger(__name__).warning("MLflow's package map not prepared: %r", exc)
distributions_of_packages()
Image.preinit()
gc.freeze()
