"""Request and response models, named by role. Options are validated by pydantic; the bulky
`inputs` arrays are validated by service.core.inputs with numpy (pydantic on 784 floats per item
costs more than the whole HTTP stack)."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from model.contract import DEFAULT_MC_SAMPLES, DEFAULT_SCORE_VARIANT, MAX_SEED, ScoreVariant

Item = Union[list[float], list[list[float]], list[list[list[float]]], str]
ITEM_DOC = ("An item: a flat list of the model's input size, a nested list in its shape "
            "(e.g. 28×28), or (image models) a base64 PNG string.")


class Options(BaseModel):
    # strict: `"seed": false` or `"n": "3"` is an error, not silently coerced.
    model_config = ConfigDict(extra="forbid", strict=True)


class ItemOptions(Options):
    """Options of the routes that take items."""

    resize: bool = Field(False, description="image models: resize a PNG or JPEG of another size to the model's "
                                            "(bilinear); without it such an image is refused with 422")


class EncodeOptions(ItemOptions):
    sample: bool = Field(False, description="also draw z = mu + sigma * eps with a seeded generator")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="seed for z (default 0)")


class EncodeRequest(EncodeOptions):
    inputs: list[Item] = Field(..., description=ITEM_DOC, min_length=1)
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"inputs": [[0.0] * 784]}]})


class ReconstructRequest(ItemOptions):
    inputs: list[Item] = Field(..., description=ITEM_DOC, min_length=1)
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"inputs": [[0.0] * 784]}]})


class SampleRequest(Options):
    n: int = Field(16, ge=1, description="number of samples (at most the server's max_sample_n)")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of z ~ N(0, I)")
    temperature: float = Field(1.0, gt=0, le=10, description="scale of z: z = temperature * N(0, I)")
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"n": 4, "seed": 0, "temperature": 1.0}]})


class InterpolateOptions(ItemOptions):
    z_start: list[float] | None = Field(None, description="latent start (instead of `start`)")
    z_end: list[float] | None = Field(None, description="latent end (instead of `end`)")
    steps: int = Field(10, ge=2, le=256, description="points including both ends")
    method: Literal["linear", "slerp"] = Field("linear", description="straight line or great circle")


class InterpolateRequest(InterpolateOptions):
    start: Item | None = Field(None, description="input to start from (encoded to its posterior mean)")
    end: Item | None = Field(None, description="input to end at")
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "examples": [{"z_start": [0.0] * 20, "z_end": [1.0] * 20, "steps": 5, "method": "slerp"}]})


class AnomalyScoreOptions(ItemOptions):
    mc_samples: int = Field(DEFAULT_MC_SAMPLES, ge=1, description="Monte Carlo samples K (at most the server's max_mc_samples)")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the Monte Carlo noise: same request, same scores")
    score: ScoreVariant = Field(
        DEFAULT_SCORE_VARIANT, description="elbo: -ELBO; iwae: importance-weighted -log p(x); elbo_latent: -ELBO plus the "
                            "Mahalanobis distance of the posterior mean from normal data; elbo_knn: -ELBO plus "
                            "the distance of the encoder features to the nearest normal training items; the "
                            "two parts of each sum standardized on held-out normal data")
    explain: bool = Field(False, description="also return per-feature reconstruction NLL")
    heatmap: bool = Field(False, description="image models: also return the per-pixel NLL as a base64 PNG heatmap")
    target_fpr: float | None = Field(None, gt=0, lt=1, description="threshold for this false-positive rate on normal data")
    contamination: float | None = Field(None, gt=0, lt=0.5, description="expected share of anomalies; threshold at its quantile")
    fdr: float | None = Field(None, gt=0, lt=1, description="flag by Benjamini-Hochberg on the items' p-values at this "
                              "false discovery rate across the request's items, instead of a threshold")


class AnomalyScoreRequest(AnomalyScoreOptions):
    inputs: list[Item] = Field(..., description=ITEM_DOC, min_length=1)
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"inputs": [[0.0] * 784], "mc_samples": 16, "seed": 0}]})


class ModelRef(BaseModel):
    name: str
    version: str


class EncodeResponse(BaseModel):
    model: ModelRef
    mu: list[list[float]]
    log_var: list[list[float]]
    z: list[list[float]] | None = None


class ReconstructResponse(BaseModel):
    model: ModelRef
    reconstructions: list[Any] = Field(..., description="decoder means, in the layout of the inputs")


class SampleResponse(BaseModel):
    model: ModelRef
    samples: list[list[float]]
    latents: list[list[float]]


class InterpolateResponse(BaseModel):
    model: ModelRef
    method: str
    latents: list[list[float]]
    outputs: list[list[float]]


class AnomalyResult(BaseModel):
    score: float = Field(..., description="the selected variant's score, higher is more anomalous (nats; "
                         "standard units for elbo_latent and elbo_knn)")
    reconstruction_nll: float
    kl: float
    percentile: float = Field(..., description="share of held-out normal data scoring lower, in %")
    p_value: float | None = Field(None, description="conformal p-value (1 + #{calibration scores >= score}) / (n + 1): "
                                  "for normal data P(p_value <= a) <= a")
    threshold: float | None = Field(..., description="score threshold; with fdr the lowest flagged score (null: "
                                    "none flagged)")
    is_anomaly: bool
    score_id: str = Field(..., description="quote it in POST /models/{name}/feedback to label this item: a signed "
                          "token naming the model version, the score and the threshold (docs/feedback-and-jobs.md)")
    feature_nll: list[float] | None = Field(None, description="per-feature reconstruction NLL; sums to reconstruction_nll")
    heatmap_png: str | None = Field(None, description="per-pixel NLL, brightest = least explained, base64 PNG")


class AnomalyScoreResponse(BaseModel):
    model: ModelRef
    score_variant: str
    mc_samples: int
    seed: int
    threshold_quantile: float | None = Field(..., description="the threshold's quantile of the calibration scores "
                                             "(null with fdr)")
    p_value_method: str | None = Field(None, description="conformal (the calibration scores), quantile_grid (models "
                                       "exported without them: approximate), or null (no calibration)")
    fdr: float | None = None
    p_value_cutoff: float | None = Field(None, description="with fdr: items with p_value <= this are flagged (0: none)")
    results: list[AnomalyResult]


class ErrorResponse(BaseModel):
    error: str
    error_type: str


class HealthResponse(BaseModel):
    status: str
