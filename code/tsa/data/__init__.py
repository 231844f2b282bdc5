"""Data: channels (legacy `.npy` or Parquet) -> validated, sharded, whole-batch streams.

Modules in data-flow order: `schema` (a config's arrays, from the contract `tsa.inputs`), `npy` /
`parquet` (the two formats), `channels` (open a channel), `validate` (rules, streamed), `sharding`
(who reads which rows), `batches` (rows -> legacy batch -> model inputs), `loader` (the batch
stream), `module` (the Lightning DataModule); `synth` and `convert` write data.
"""

from tsa.data.batches import model_inputs, to_batch
from tsa.data.channels import open_channel
from tsa.data.module import TsaDataModule
from tsa.data.validate import validate_channel

__all__ = ["TsaDataModule", "model_inputs", "open_channel", "to_batch", "validate_channel"]
