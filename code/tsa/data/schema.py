"""The arrays a TSA job reads, with their expected shapes and kinds (contracts §3, spec §2.1).

One example per row: the model's arrays (names and per-example shapes from `tsa.inputs`, the
model-input contract) plus the label `Y (N,)` or `(N, 1)`, read from a `ModelConfig`. Single
sequence: `X_seq_cat`, `X_seq_num`, `X_num`, `Y`; dual sequence: the two sequence arrays twice,
prefixed `cid_` and `ccid_`, plus the same `X_num` and `Y`. Both file formats (legacy `.npy`,
Parquet) hold exactly these arrays under these names.
"""

from __future__ import annotations

from dataclasses import dataclass

from tsa.config import ModelConfig
from tsa.inputs import ENGINEERED, LABEL, SEQUENCE_PREFIXES, ArrayKind, largest_category_id, model_arrays

ID_COLUMN = "id"  # optional example id (Parquet only), carried into prediction files


@dataclass(frozen=True)
class ArraySpec:
    """One array: its name, kind and per-example shape (None where any size is accepted)."""

    name: str
    kind: ArrayKind
    shape: tuple[int, ...] | None
    required: bool = True

    def describe_shape(self) -> str:
        if self.shape is None:
            return "(N, any)"
        return "(N" + "".join(f", {s}" for s in self.shape) + ")"


def array_specs(cfg: ModelConfig) -> list[ArraySpec]:
    """Every array the model of `cfg` reads, in file-name order."""
    arrays = model_arrays(cfg.model_type, cfg.seq_len, cfg.n_cat_features, cfg.n_num_features,
                          cfg.n_engineered_num_features)
    specs = [ArraySpec(name, kind, shape) for name, (shape, kind) in arrays.items()]
    if ENGINEERED not in arrays:  # no engineered features: the legacy X_num file may still exist, carried, never used
        specs.append(ArraySpec(ENGINEERED, "float", None, required=False))
    specs.append(ArraySpec(LABEL, "label", ()))
    return specs


def sequence_prefixes(cfg: ModelConfig) -> tuple[str, ...]:
    return SEQUENCE_PREFIXES[cfg.model_type]


def max_category_id(cfg: ModelConfig) -> int:
    """Largest valid categorical id: rows 1..n_embedding-nn of the table (0 = padding/unknown)."""
    return largest_category_id(cfg.n_embedding, cfg.n_num_features)
