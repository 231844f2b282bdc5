"""Synthetic TSA data with a planted temporal signal, for any config (single or dual).

    tsa data synth --hyperparameters hyperparameters/smoke.json --output data/ --format npy

The arrays follow the legacy layout exactly (left padding, the current order last,
`time_to_last` in seconds with the legacy 1e7 clipping rule Q13, global categorical ids,
`not_padded`). The signal: fraud (label 1, ~20 %) is a *burst* — the last few orders before the
current one came minutes apart (legit histories are days apart) and carry high values of the
first numerical feature and, often, one "risky" value of the first categorical feature. The
first engineered feature is mildly informative, and 5 % of labels are flipped, so a short run
of a TSA model beats chance clearly without reaching AUC 1.
"""

from __future__ import annotations

import numpy as np

from tsa.config import ModelConfig
from tsa.data.schema import max_category_id, sequence_prefixes
from tsa.inputs import ENGINEERED, LABEL, sequence_names

FRAUD_RATE = 0.2
LABEL_NOISE = 0.05
LEGIT_GAP_SECONDS = 86_400.0  # a day between a legit customer's orders, on average
BURST_GAP_SECONDS = 900.0  # fifteen minutes inside a fraud burst
TIME_CLIP_SECONDS = 1e7  # legacy preprocessing: any value above -> the whole column set to 1e7


def _sequences(cfg: ModelConfig, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """X_seq_cat (N, L, nc) int32 and X_seq_num (N, L, nn+2) float32 for the given labels."""
    n, length, nc, nn = len(labels), cfg.seq_len, cfg.n_cat_features, cfg.n_num_features
    fraud = labels == 1
    min_history = min(3, length - 1)
    history = np.where(fraud, rng.integers(min_history, length, n), rng.integers(0, length, n))
    burst = np.minimum(history, rng.integers(2, 6, n)) * fraud  # burst rows right before the current one
    position = np.arange(length)[None, :]  # row index; the current order is row L-1
    steps_back = (length - 1) - position  # 0 for the current order
    real = steps_back <= history[:, None]
    in_burst = (steps_back >= 1) & (steps_back <= burst[:, None])

    gaps = rng.exponential(LEGIT_GAP_SECONDS, (n, length)).astype(np.float64)
    gaps = np.where(in_burst, rng.exponential(BURST_GAP_SECONDS, (n, length)), gaps)
    gaps[:, -1] = 0.0
    time_to_last = np.flip(np.cumsum(np.flip(gaps, axis=1), axis=1), axis=1) * real
    clipped = (time_to_last > TIME_CLIP_SECONDS).any(axis=1)
    time_to_last[clipped] = TIME_CLIP_SECONDS  # legacy rule Q13: the whole column, padding included

    values_per_feature = max(max_category_id(cfg) // nc, 1)
    offsets = (np.arange(nc) * values_per_feature) % max(max_category_id(cfg), 1)
    cat = offsets[None, None, :] + rng.integers(1, values_per_feature + 1, (n, length, nc))
    risky = in_burst & (rng.random((n, length)) < 0.7)
    cat[..., 0] = np.where(risky, offsets[0] + 1, cat[..., 0])
    cat = np.minimum(cat, max_category_id(cfg)) * real[..., None]

    num = rng.random((n, length, nn))
    num[..., 0] = np.where(in_burst, 0.6 + 0.4 * rng.random((n, length)), 0.7 * num[..., 0])
    num = num * real[..., None]
    seq_num = np.concatenate([num, time_to_last[..., None], real[..., None].astype(np.float64)], axis=-1)
    return cat.astype(np.int32), seq_num.astype(np.float32)


def generate(cfg: ModelConfig, rows: int, seed: int) -> dict[str, np.ndarray]:
    """The legacy arrays of `rows` synthetic examples for `cfg`."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(rows) < FRAUD_RATE).astype(np.int64)
    arrays: dict[str, np.ndarray] = {}
    for index, prefix in enumerate(sequence_prefixes(cfg)):
        # Dual: the burst shows on the card (ccid) history for half of the fraud, on cid for the rest.
        seq_labels = labels if index == 0 else labels * (rng.random(rows) < 0.5)
        cat, num = _sequences(cfg, seq_labels, rng)
        if prefix == "ccid_":
            only_current = rng.random(rows) < 0.3  # many cards have no history besides this order
            cat[only_current, :-1] = 0
            num[only_current, :-1] = 0.0
        cat_name, num_name = sequence_names(prefix)
        arrays[cat_name], arrays[num_name] = cat, num
    engineered = rng.random((rows, cfg.n_engineered_num_features))
    if cfg.n_engineered_num_features:
        engineered[:, 0] = np.clip(engineered[:, 0] * 0.8 + 0.2 * labels, 0.0, 1.0)
    arrays[ENGINEERED] = engineered.astype(np.float32)
    flip = rng.random(rows) < LABEL_NOISE
    arrays[LABEL] = np.where(flip, 1 - labels, labels)
    return arrays
