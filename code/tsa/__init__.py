"""tsa-training: the legacy Temporal Self-Attention fraud models, proven, in a SageMaker container.

Data flow, one module per step: `contract` (the /opt/ml job) -> `config` (validated
hyperparameters) -> `data` (channels to batches) -> `models` (+ losses) -> `training`
(Lightning) -> `artifacts` (/opt/ml/model), joined by `entrypoint`; `legacy` holds the
legacy-weight interop. `inputs` is the model-input contract (array names, padding mask, forward
arguments, value rules) that data validation, batch building and the inference handler share.
"""

from tsa.config import DataConfig, JobConfig, ModelConfig, RuntimeConfig, TrainConfig
from tsa.contract import Channel, JobPaths, ResourceConfig
from tsa.errors import ChannelError, CheckpointError, ConfigError, DataError, JobError

__version__ = "0.1.0"

__all__ = [
    "Channel",
    "ChannelError",
    "CheckpointError",
    "ConfigError",
    "DataConfig",
    "DataError",
    "JobConfig",
    "JobError",
    "JobPaths",
    "ModelConfig",
    "ResourceConfig",
    "RuntimeConfig",
    "TrainConfig",
    "__version__",
]
