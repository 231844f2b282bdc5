"""Configuration: every hyperparameter, its type, default, legacy alias and validation.

Input: the flat hyperparameter map of `hyperparameters.json` (values usually strings, in any
of the three launcher encodings). Output: a frozen `JobConfig` with four sections that mirror
the data flow (`model`, `data`, `train`, `runtime`); downstream code takes a section and never
re-reads hyperparameters or invents defaults.

Non-obvious:
- Values are decoded *by the type of the field they fill*, not by blind `json.loads`: a string
  field keeps `"123"` as text, a bool field takes true/True/"1"/1 and rejects "yes please".
  One layer of JSON string quoting (`"\\"x\\""`, SDK v2 framework estimators) is removed first.
- Legacy names are the canonical names (`n_cat_features`, `max_epoch`, ...); the legacy
  selectors `modelname` and `num_seq` are accepted and must agree with `model_type`.
- Every problem is collected and raised once as `ConfigError`.
- Defaults are the legacy `train.py` argparse defaults, except `use_mlp` (0: the legacy 1
  crashed) — the shipped examples in `hyperparameters/` hold the production values.
"""

from __future__ import annotations

import difflib
import json
import logging
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tsa.contract import metric_definitions
from tsa.errors import ConfigError

log = logging.getLogger(__name__)

LEGACY_MODELNAMES = {"OrderFeature": "single", "TwoSeqMoEOrderFeature": "dual"}
LEGACY_NUM_SEQ = {"1": "single", "2": "dual"}
LegacyLoss = Literal["CrossEntropyLoss", "FocalLoss", "BCEWithLogitsLoss", "Cyclical_FocalLoss"]
Precision = Literal["32", "16-mixed", "bf16-mixed"]

# Keys a legacy job may carry that have no effect here (nor had any in the legacy job).
IGNORED_LEGACY_KEYS = {
    "steps_per_epoch": "unused by the legacy train.py too",
    "seconds": "only named the legacy checkpoint file",
}
# Keys of the legacy job that this container replaces with something else.
UNSUPPORTED_LEGACY_KEYS = {
    "load_model": "resuming is automatic from the checkpoint folder (`checkpoint_dir`, default "
    "/opt/ml/checkpoints); remove the key",
    "model_path": "resuming is automatic from the checkpoint folder (`checkpoint_dir`); remove the key",
}
RESERVED_PREFIXES = ("sagemaker_",)
TUNING_OBJECTIVE_KEY = "_tuning_objective_metric"  # SageMaker adds it to every training job of a tuning job
TUNING_OBJECTIVE = "validation:best_auc"  # the metric the selected model is chosen by


def log_tuning_objective(metric: object) -> None:
    """A tuning job's objective: accepted and logged; one that is not a shipped metric is warned about."""
    names = {definition["Name"] for definition in metric_definitions()}
    if metric in names:
        log.info("tuning job: objective metric %r (the job reports it in its METRIC lines)", metric)
    else:
        log.warning("tuning job: objective metric %r is not one of the job's metrics %s; tune on %r", metric,
                    sorted(names), TUNING_OBJECTIVE)


# A value that becomes (part of) a file name: no path separators, no leading dot, a safe character set.
FILE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
FILE_NAME_WORDS = "a file name: letters, digits, '.', '_', '-', starting with a letter or digit, at most 128"


# A fact about a field: a resumed job must share its value with the checkpoint it resumes from, because it
# changes the numbers (every field of a section whose `every_field_must_match_on_resume` is set, and the
# fields marked with this). Others, such as `test_name`, which only names files, may change. The schema
# shows it as "x-resume".
RESUME_MUST_MATCH = {"x-resume": "must match the checkpoint the job resumes from"}


class _Section(BaseModel):
    # Every float must be finite: inf and nan parse as floats but train a NaN model.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    every_field_must_match_on_resume: ClassVar[bool] = False

    @classmethod
    def resume_invariant(cls) -> tuple[str, ...]:
        """The fields a resumed job must share with its checkpoint (`RESUME_MUST_MATCH`)."""
        return tuple(name for name, field in cls.model_fields.items()
                     if cls.every_field_must_match_on_resume or field.json_schema_extra == RESUME_MUST_MATCH)


class ModelConfig(_Section):
    """Architecture of the TSA classifier (legacy names; spec §4)."""

    every_field_must_match_on_resume: ClassVar[bool] = True

    model_type: Literal["single", "dual"] = Field(
        "single",
        description="single = OrderFeatureAttentionClassifier; dual = TwoSeqMoEOrderFeatureAttentionClassifier "
        "(cid + ccid sequences). Legacy alias: modelname = OrderFeature | TwoSeqMoEOrderFeature.",
    )
    n_cat_features: int = Field(description="Categorical features per order row.", ge=1)
    n_num_features: int = Field(description="Numerical features per order row (without time/not_padded).", ge=1)
    n_embedding: int = Field(
        description="Embedding vocabulary: max categorical id + n_num_features (table has n_embedding+2 rows).",
        ge=2,
    )
    n_engineered_num_features: int = Field(0, description="Dense engineered features of the current order.", ge=0)
    seq_len: int = Field(51, description="Order rows per sequence in the data (history + current order).", ge=1)
    n_classes: int = Field(2, description="Number of classes (the legacy metrics support 2 only).", ge=2)
    dim_embedding_table: int = Field(128, description="Embedding width d; order attention works on 2d.", ge=1)
    dim_attn_feedforward: int = Field(64, description="Hidden width of the attention feed-forward.", ge=1)
    num_heads: int = Field(1, description="Attention heads (order and feature attention).", ge=1)
    dropout: float = Field(0.1, description="Dropout probability everywhere.", ge=0.0, lt=1.0)
    n_layers_order: int = Field(6, description="Order-attention (post-norm) layers.", ge=1)
    n_layers_feature: int = Field(6, description="Feature-attention (pre-norm) layers.", ge=1)
    emb_tbl_use_bias: bool = Field(True, description="Create the per-feature embedding bias tables.")
    use_moe: bool = Field(True, description="Mixture-of-experts feed-forward instead of a plain FFN.")
    num_experts: int = Field(1, description="Experts per MoE layer.", ge=1)
    use_time_seq: bool = Field(True, description="Temporal attention with exp(dt/1e6) logit weighting.")
    use_mlp: bool = Field(False, description="Legacy MLP head; must stay false (the legacy code crashed with it).")
    fix_gate_history_rule: bool = Field(
        False,
        description="Fix Q1: zero the ccid gate when every ccid history row is padded (derived from the "
        "shape) instead of when exactly 50 rows are padded.",
    )
    fix_moe_eval_deterministic: bool = Field(
        False,
        description="Fix Q4: in eval, keep the second expert iff its gate exceeds the 0.2 threshold "
        "(deterministic) instead of drawing random numbers.",
    )
    fix_feature_aggregation_widths: bool = Field(
        False, description="Fix Q9: floor FeatureAggregation widths at 1 so inputs below 32 features are used."
    )

class DataConfig(_Section):
    """Where and how the channel data is read (legacy layout: contracts §3)."""

    data_version: str = Field("v0", description="Suffix of the legacy .npy file names.", pattern=FILE_NAME_PATTERN,
                              json_schema_extra=RESUME_MUST_MATCH)
    data_format: Literal["auto", "npy", "parquet"] = Field(
        "auto", description="Channel file format; auto picks by the files present.", json_schema_extra=RESUME_MUST_MATCH
    )
    use_small_batch: bool = Field(False, description="Use only the first 40,000 rows of every split (legacy debug).",
                                  json_schema_extra=RESUME_MUST_MATCH)
    num_workers: int = Field(0, description="DataLoader worker processes per rank.", ge=0)


class TrainConfig(_Section):
    """Optimisation, loss and stopping, as the legacy loop did them (spec §5, §6)."""

    every_field_must_match_on_resume: ClassVar[bool] = True

    batch_size: int = Field(1024, description="Per-process batch size.", ge=1)
    max_epoch: int = Field(70, description="Epochs; also OneCycleLR total_steps.", ge=1)
    optim: Literal["adam"] = Field("adam", description="Optimizer; only adam ever worked in the legacy code.")
    lr: float = Field(1e-5, description="Adam lr (overridden by OneCycleLR to scheduler_maxlr/25, quirk Q19).", gt=0,
                      le=1)
    scheduler_maxlr: float = Field(1e-3, description="OneCycleLR max_lr.", gt=0, le=1)
    beta1: float = Field(0.9, description="Adam beta1 (overridden by OneCycleLR momentum cycling).", ge=0, lt=1)
    beta2: float = Field(0.999, description="Adam beta2.", ge=0, lt=1)
    weight_decay: float = Field(0.0, description="Adam (coupled L2) weight decay.", ge=0, le=1)
    loss: LegacyLoss = Field("CrossEntropyLoss", description="Training criterion (legacy set_loss names).")
    loss_gamma: float = Field(2.0, description="FocalLoss gamma.", ge=0, le=100)
    loss_alpha: float = Field(0.25, description="FocalLoss alpha (a plain multiplier).", ge=0, le=100)
    loss_reduction: Literal["mean", "sum"] = Field(
        "mean", description="FocalLoss reduction (and, with fix_loss_reduction, every loss's reduction)."
    )
    cyclical_factor: float = Field(2.0, description="Cyclical_FocalLoss factor.", gt=0, le=100)
    gamma_hc: float = Field(0.0, description="Cyclical_FocalLoss gamma_hc.", ge=0, le=100)
    gamma_pos: float = Field(0.0, description="Cyclical_FocalLoss gamma_pos.", ge=0, le=100)
    gamma_neg: float = Field(4.0, description="Cyclical_FocalLoss gamma_neg.", ge=0, le=100)
    fix_loss_selection: bool = Field(
        False,
        description="Fix Q18: make BCEWithLogitsLoss (one-hot targets) and Cyclical_FocalLoss (epoch passed "
        "in validation) work; the legacy job crashed with either.",
    )
    fix_loss_reduction: bool = Field(
        False,
        description="Fix Q18: CrossEntropyLoss/BCEWithLogitsLoss/Cyclical_FocalLoss use loss_reduction "
        "instead of the hard-coded sum (gradient scale no longer tied to batch size).",
    )
    fix_evaluation_order: bool = Field(
        False,
        description="Fix Q24: evaluate validation/calibration/test in row order, each example once, and log "
        "the loss over every rank's batches. Legacy (default): the training sampler's shuffled, padded, "
        "rank-strided order, ranks' blocks concatenated and cut to N, rank 0's own loss logged; with MoE "
        "that order changes the scores, so AUCs, model selection and score files change with the flag.",
    )
    patience: int = Field(10, description="Early-stopping patience in epochs (on validation AUC).", ge=1)
    seed: int = Field(0, description="Random seed; 0 means not seeded, as in the legacy job (Q20).", ge=0)


class RuntimeConfig(_Section):
    """Precision, processes, checkpoints and naming: how the job runs, not what it computes."""

    use_amp: bool = Field(False, description="Legacy AMP switch: true means precision 16-mixed.",
                          json_schema_extra=RESUME_MUST_MATCH)
    precision: Precision | None = Field(
        None, description="32, 16-mixed or bf16-mixed; default follows use_amp (16-mixed if set, else 32).",
        json_schema_extra=RESUME_MUST_MATCH,
    )
    accelerator: Literal["auto", "cpu", "gpu"] = Field("auto", description="gpu if available under auto.",
                                                       json_schema_extra=RESUME_MUST_MATCH)
    cpu_processes: int = Field(1, description="Processes per host when training on CPU (each a full copy of the "
                               "model and its batches).", ge=1, le=256, json_schema_extra=RESUME_MUST_MATCH)
    checkpoint_dir: str | None = Field(
        None, description="Spot/stop checkpoint folder; default <job root>/checkpoints, i.e. /opt/ml/checkpoints."
    )
    tensorboard_dir: str | None = Field(
        None, description="TensorBoard event folder (scalars per step and epoch); default <job root>/output/"
        "tensorboard when that folder exists, which SageMaker creates for a TensorBoardOutputConfig.",
    )
    ignore_checkpoint: bool = Field(
        False,
        description="Train from the start even if the checkpoint folder holds a last.ckpt (it is overwritten); "
        "by default the job resumes from it, and refuses one written by another job or config.",
    )
    log_every_n_steps: int = Field(50, description="Progress/metric line every N training steps.", ge=1)
    host_resolution_timeout_s: int = Field(
        600, description="Multi-node jobs: seconds to wait for every host's name to resolve before failing.",
        ge=1, le=3600,
    )
    rendezvous_timeout_s: int = Field(
        600, description="Multi-node jobs: seconds to wait for every host to join the job before training (each "
        "host reports its checks, processes, config and checkpoint) before failing, naming the missing hosts.",
        ge=1, le=3600,
    )
    stop_check_every_n_steps: int = Field(
        20,
        description="Multi-process jobs agree on a SIGTERM stop every N training steps (one small collective "
        "and host sync each); single-process jobs check every step at no cost.",
        ge=1,
    )
    trace: bool = Field(
        False,
        description="Write a per-rank run trace to output/data/trace/ (training rows, per-batch losses, RNG "
        "digests before every forward, weight digests per epoch) to compare a run with a legacy run.",
    )
    test_name: str = Field("order-attention", description="Base name of the legacy-keyed weight file.",
                           pattern=FILE_NAME_PATTERN)
    mlflow_experiment_name: str = Field(
        "tsa-training", description="MLflow experiment of the job's run, when MLFLOW_TRACKING_URI is set "
        "(docs/mlflow.md).", min_length=1, max_length=250,
    )
    mlflow_run_name: str | None = Field(
        None, description="Name of the job's MLflow run; default the training job's name (TRAINING_JOB_NAME), "
        "else one MLflow makes up.", min_length=1, max_length=250,
    )
    fast_mode: bool = Field(
        False,
        description="Opt-in speed: fused attention and broadcast table lookups, float32 matmul precision "
        "'high' (TF32 on GPU); on GPU also bf16-mixed precision (unless precision is set) and torch.compile "
        "of the forward. Numbers then differ from the exact legacy path (contract: fp32 logits within 1e-5 of "
        "it; docs/fast_mode.md).",
        json_schema_extra=RESUME_MUST_MATCH,
    )


SECTIONS: dict[str, type[_Section]] = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "runtime": RuntimeConfig,
}


class JobConfig(BaseModel):
    """The whole validated job configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelConfig
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @classmethod
    def from_hyperparameters(cls, raw: Mapping[str, Any]) -> JobConfig:
        """Validate a flat hyperparameter map (wire strings or typed values)."""
        return _build_job_config(raw)

    def to_hyperparameters(self) -> dict[str, Any]:
        """Flat typed values of every field (the inverse of `from_hyperparameters`)."""
        flat: dict[str, Any] = {}
        for section in SECTIONS:
            flat.update(getattr(self, section).model_dump(mode="json"))
        return flat

    def resolved(self) -> dict[str, Any]:
        """The resolved configuration as JSON-ready sections (what the machine makes of it: the run plan)."""
        return self.model_dump(mode="json")

    @staticmethod
    def resume_invariant() -> dict[str, tuple[str, ...]]:
        """Section -> the fields a resumed job must share with its checkpoint (`RESUME_MUST_MATCH`)."""
        return {name: section.resume_invariant() for name, section in SECTIONS.items()}


def typed_hyperparameters(raw: Mapping[str, Any], config: JobConfig | None = None) -> dict[str, Any]:
    """The typed values behind a hyperparameter map (any encoding), for the keys it sets.

    What a user would hand a launcher: `{"use_amp": True, "lr": 5e-05, "modelname": "OrderFeature"}`.
    `config` is the map's validated config (needed when the map names a `config_file`); other keys
    (`config_file`, the legacy selectors) keep their text.
    """
    flat = (config or JobConfig.from_hyperparameters(raw)).to_hyperparameters()
    return {key: flat.get(key, _strip_json_quotes(value) if isinstance(value, str) else value)
            for key, value in raw.items()}


def field_section() -> dict[str, str]:
    """Hyperparameter name -> section name."""
    return {name: section for section, model in SECTIONS.items() for name in model.model_fields}


def hyperparameter_names() -> list[str]:
    """Every accepted hyperparameter name, legacy selectors included."""
    return [*field_section(), "modelname", "num_seq", "config_file", *IGNORED_LEGACY_KEYS]


def json_schema() -> dict[str, Any]:
    """JSON schema of the flat hyperparameter object (what `hyperparameters.json` may hold)."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for model in SECTIONS.values():
        schema = model.model_json_schema()
        properties.update(schema["properties"])
        for name in model.resume_invariant():
            properties[name].update(RESUME_MUST_MATCH)
        required.extend(schema.get("required", []))
    properties["modelname"] = {
        "enum": list(LEGACY_MODELNAMES),
        "description": "Legacy alias of model_type.",
        "type": "string",
    }
    properties["num_seq"] = {"enum": list(LEGACY_NUM_SEQ), "description": "Legacy; must agree with model_type."}
    properties["config_file"] = {
        "type": "string",
        "description": "JSON file '<channel>/<path>' under /opt/ml/input/data with more hyperparameters "
        "(for values over SageMaker's 100 keys / 2500 characters).",
    }
    for key, why in IGNORED_LEGACY_KEYS.items():
        properties[key] = {"description": f"Accepted and ignored ({why})."}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "tsa-training hyperparameters",
        "description": "Flat hyperparameter map; SageMaker passes every value as a string.",
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


# --- decoding -------------------------------------------------------------------------------


def _strip_json_quotes(value: str) -> str:
    """Remove one layer of JSON string encoding (`"\\"x\\""` -> `x`); else keep the text."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(decoded, str):
            return decoded
    return value


def _is_optional(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    return origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(annotation)


def decode_value(annotation: Any, value: Any) -> Any:
    """Turn a wire value into what the field expects; pydantic (lax mode) does the rest."""
    if not isinstance(value, str):
        return value
    text = _strip_json_quotes(value)
    if _is_optional(annotation) and text in ("null", "None", ""):
        return None
    return text


def _describe(section: type[_Section], name: str) -> str:
    """What a field allows, in words: 'an integer >= 1', 'one of [...]', 'true or false'."""
    info = section.model_fields[name]
    annotation = info.annotation
    if _is_optional(annotation):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is Literal:
        return f"one of {list(typing.get_args(annotation))}"
    if annotation is bool:
        return "true or false (also True/False/1/0)"
    words = {int: "an integer", float: "a finite number", str: "a string"}.get(annotation, str(annotation))
    bounds = []
    for meta in info.metadata:
        for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            bound = getattr(meta, attr, None)
            if bound is not None:
                bounds.append(f"{symbol} {bound}")
        if getattr(meta, "min_length", None):
            words = "a non-empty string"
        if getattr(meta, "pattern", None) == FILE_NAME_PATTERN:
            words = FILE_NAME_WORDS
    return f"{words} {' and '.join(bounds)}" if bounds else words


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, hyperparameter_names(), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _build_job_config(raw: Mapping[str, Any]) -> JobConfig:
    problems: list[str] = []
    routed: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    owners = field_section()
    selectors: dict[str, str] = {}
    for key, value in raw.items():
        if key == TUNING_OBJECTIVE_KEY:
            log_tuning_objective(value)
        elif key.startswith(RESERVED_PREFIXES):
            log.info("hyperparameter %r is reserved by SageMaker: ignored", key)
        elif key in IGNORED_LEGACY_KEYS:
            log.info("hyperparameter %r ignored (%s)", key, IGNORED_LEGACY_KEYS[key])
        elif key in UNSUPPORTED_LEGACY_KEYS:
            problems.append(f"hyperparameter '{key}' = {value!r} is not supported: {UNSUPPORTED_LEGACY_KEYS[key]}")
        elif key == "config_file":
            problems.append(
                f"hyperparameter 'config_file' = {value!r} is a file to read, not a value: read the map with "
                "tsa.contract.load_hyperparameter_file, which merges that file in"
            )
        elif key in ("modelname", "num_seq"):
            selectors[key] = _strip_json_quotes(str(value))
        elif key in owners:
            section = SECTIONS[owners[key]]
            routed[owners[key]][key] = decode_value(section.model_fields[key].annotation, value)
        else:
            problems.append(f"hyperparameter '{key}' is not known{_suggest(key)} (see `tsa schema`)")
    problems.extend(_apply_selectors(selectors, routed["model"], raw))

    sections: dict[str, _Section] = {}
    for name, model in SECTIONS.items():
        try:
            sections[name] = model(**routed[name])
        except ValidationError as exc:
            problems.extend(_format_validation_error(model, exc, raw))
    if problems:
        raise ConfigError(problems)
    config = JobConfig(**sections)  # type: ignore[arg-type]
    problems = cross_field_problems(config)
    if problems:
        raise ConfigError(problems)
    return config


def _apply_selectors(selectors: dict[str, str], model_values: dict[str, Any], raw: Mapping[str, Any]) -> list[str]:
    """Map legacy `modelname` / `num_seq` onto `model_type`; all given selectors must agree."""
    problems: list[str] = []
    choices: dict[str, str] = {}
    if "model_type" in model_values:
        choices["model_type"] = str(model_values["model_type"])
    if "modelname" in selectors:
        value = selectors["modelname"]
        if value in LEGACY_MODELNAMES:
            choices["modelname"] = LEGACY_MODELNAMES[value]
        else:
            problems.append(f"hyperparameter 'modelname' = {value!r}: expected one of {list(LEGACY_MODELNAMES)}")
    if "num_seq" in selectors:
        value = selectors["num_seq"]
        if value in LEGACY_NUM_SEQ:
            choices["num_seq"] = LEGACY_NUM_SEQ[value]
        else:
            problems.append(f"hyperparameter 'num_seq' = {value!r}: expected one of {list(LEGACY_NUM_SEQ)}")
    if len(set(choices.values())) > 1:
        given = ", ".join(f"{key}={raw.get(key)!r}" for key in choices)
        problems.append(
            f"hyperparameters disagree on the model: {given}: set model_type to single or dual "
            "(and modelname/num_seq, if given, to match)"
        )
    elif choices:
        model_values["model_type"] = next(iter(choices.values()))
    return problems


def _format_validation_error(model: type[_Section], exc: ValidationError, raw: Mapping[str, Any]) -> list[str]:
    problems = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "?"
        if error["type"] == "missing":
            problems.append(f"hyperparameter '{name}' is required: set it to {_describe(model, name)}")
            continue
        shown = raw.get(name, error.get("input"))
        expected = _describe(model, name) if name in model.model_fields else ""
        problems.append(f"hyperparameter '{name}' = {shown!r}: expected {expected} ({error['msg']})")
    return problems


def cross_field_problems(config: JobConfig) -> list[str]:
    """Rules that involve more than one field."""
    m, t, r = config.model, config.train, config.runtime
    problems = []
    if m.dim_embedding_table % m.num_heads:
        problems.append(
            f"hyperparameter 'num_heads' = {m.num_heads}: must divide dim_embedding_table = "
            f"{m.dim_embedding_table} (feature attention works on d, order attention on 2d); "
            f"pick a divisor such as 1"
        )
    if m.n_embedding <= m.n_num_features:
        problems.append(
            f"hyperparameter 'n_embedding' = {m.n_embedding}: must exceed n_num_features = {m.n_num_features} "
            "(the table holds categorical ids 1..n_embedding-n_num_features, then one row per numerical feature)"
        )
    if m.use_mlp:
        problems.append(
            "hyperparameter 'use_mlp' = true is not supported: the legacy MLPBlock it names was never "
            "defined, so no legacy job ever ran with it; set use_mlp=0 (production value)"
        )
    if m.n_classes != 2:
        problems.append(
            f"hyperparameter 'n_classes' = {m.n_classes}: only 2 is supported (the legacy AUC, score files "
            "and percentile map treat the last class as the positive one, Q33); set n_classes=2"
        )
    if t.loss in ("BCEWithLogitsLoss", "Cyclical_FocalLoss") and not t.fix_loss_selection:
        problems.append(
            f"hyperparameter 'loss' = {t.loss!r} crashed the legacy job (quirk Q18): allowed are "
            "'CrossEntropyLoss' and 'FocalLoss', or set fix_loss_selection=true to use the repaired loss"
        )
    if r.precision is not None and r.use_amp and r.precision == "32":
        problems.append(
            "hyperparameters disagree: use_amp=1 asks for 16-mixed but precision='32': drop one of them"
        )
    return problems
