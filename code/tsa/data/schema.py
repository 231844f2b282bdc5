"""The arrays a TSA job reads, with their expected shapes and kinds (contracts §3, spec §2.1).

One example per row. Single sequence: `X_seq_cat (N, L, nc)` integer ids, `X_seq_num (N, L,
nn+2)` floats whose last two columns are `time_to_last` (seconds) and `not_padded` (0/1),
`X_num (N, ne)` floats, `Y (N,)` or `(N, 1)` integer labels. Dual sequence: the two sequence
arrays twice, prefixed `cid_` and `ccid_`, plus the same `X_num` and `Y`. Both file formats
(legacy `.npy`, Parquet) hold exactly these arrays under these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tsa.config import ModelConfig

ArrayKind = Literal["ids", "float", "label"]
SEQUENCE_PREFIXES = {"single": ("",), "dual": ("cid_", "ccid_")}
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
    seq_len, nc, nn = cfg.seq_len, cfg.n_cat_features, cfg.n_num_features
    specs: list[ArraySpec] = []
    for prefix in SEQUENCE_PREFIXES[cfg.model_type]:
        specs.append(ArraySpec(f"{prefix}X_seq_cat", "ids", (seq_len, nc)))
        specs.append(ArraySpec(f"{prefix}X_seq_num", "float", (seq_len, nn + 2)))
    # Without engineered features the legacy X_num file may still exist; it is carried, never used.
    engineered = cfg.n_engineered_num_features
    specs.append(ArraySpec("X_num", "float", (engineered,) if engineered else None, required=engineered > 0))
    specs.append(ArraySpec("Y", "label", ()))
    return specs


def sequence_prefixes(cfg: ModelConfig) -> tuple[str, ...]:
    return SEQUENCE_PREFIXES[cfg.model_type]


def max_category_id(cfg: ModelConfig) -> int:
    """Largest valid categorical id: rows 1..n_embedding-nn of the table (0 = padding/unknown)."""
    return cfg.n_embedding - cfg.n_num_features
