"""repinv's Optuna sweeper (`hparams_search=optuna`): Hydra's, for a search that may end without a finished trial.

A failed job is a failed trial (the job returns no score) and the search goes on. Where no trial finished, Hydra's
sweeper raises as it names the best one; this one ends the search without `optimization_results.yaml` instead, so
the sweep still ends with its summary (every job failed, exit 1). Hydra finds sweepers in `hydra_plugins` only.
"""

import logging

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

log = logging.getLogger(__name__)

NO_TRIAL = "No trials are completed yet"  # what Optuna raises when asked for the best trial of a search none finished


class RepinvOptunaSweeper(OptunaSweeper):
    """Hydra's Optuna sweeper, whose search may end with every trial failed."""

    def sweep(self, arguments: list[str]) -> None:
        try:
            return super().sweep(arguments)
        except ValueError as err:
            if NO_TRIAL not in str(err):
                raise
            log.error("no trial of the search finished, so it has no best values (no optimization_results.yaml)")
