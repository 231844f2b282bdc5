"""Training: the legacy optimisation recipe, metrics and stopping, as a Lightning system.

The package's face, what the entrypoint runs a job with, in the order a job uses it:
`world` (processes, rendezvous) and `plan` (numerics) decide how the job runs; `budget` refuses one
that cannot fit; `checkpoints` names what a resumed job reads; `cluster` makes the hosts agree;
`tracking` opens the MLflow run; `trainer.fit` trains and scores (`system`, `callbacks`, `selection`,
`evaluation`, `metrics`); `stop` turns SIGTERM into a clean exit at a safe point.
"""

from tsa.training.budget import check_memory, output_bytes
from tsa.training.checkpoints import CheckpointFolder
from tsa.training.cluster import export_shards, inherited_shards, meet, peers_watched
from tsa.training.plan import RunPlan, plan_run
from tsa.training.result import TrainingResult
from tsa.training.stop import STOP, StopRequested, check_stop, install_stop_handler
from tsa.training.tracking import TrackingLogger, check_tracking, left_work_behind, open_tracking
from tsa.training.trainer import fit
from tsa.training.world import configure_environment, is_launched_worker

__all__ = [
    "STOP",
    "CheckpointFolder",
    "RunPlan",
    "StopRequested",
    "TrackingLogger",
    "TrainingResult",
    "check_memory",
    "check_stop",
    "check_tracking",
    "configure_environment",
    "export_shards",
    "fit",
    "inherited_shards",
    "install_stop_handler",
    "is_launched_worker",
    "left_work_behind",
    "meet",
    "open_tracking",
    "output_bytes",
    "peers_watched",
    "plan_run",
]
