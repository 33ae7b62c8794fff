"""Per-projection ESD results and the model-level report (a versioned JSON document).

Norm metrics use WeightWatcher's definitions over *all* eigenvalues λ of WᵀW (no threshold):
``spectral_norm`` = λ_max (= σ_max², WeightWatcher's "spectral_norm"), ``log_frobenius_norm`` =
log10 Σλ = log10 ‖W‖_F² (WeightWatcher's "log_norm"), ``stable_rank`` = Σλ / λ_max, and
``alpha_weighted`` = α · log10 λ_max ("alpha-hat").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from acttail.errors import ActTailError
from acttail.esd.powerlaw import PowerLawFit
from acttail.models.architectures import PROJECTION_ORDER
from acttail.models.base import ProjectionInfo

REPORT_FORMAT = "acttail.esd"
REPORT_VERSION = 1


@dataclass(frozen=True)
class ProjectionESD:
    """The ESD summary of one projection's weight W [d_out, d_in]."""

    name: str  # HF module path, e.g. model.layers.3.self_attn.q_proj
    layer: int
    kind: str  # q | k | v | o | gate | up | down
    shape: tuple[int, int]  # (d_out, d_in)
    param_count: int
    alpha: float
    xmin: float
    ks_distance: float
    num_tail: int
    spectral_norm: float  # λ_max
    log_frobenius_norm: float  # log10 Σλ
    stable_rank: float  # Σλ / λ_max
    alpha_weighted: float  # α · log10 λ_max
    num_evals: int  # min(d_out, d_in): eigenvalues of the Gram, before the 1e-5 threshold

    @classmethod
    def from_fit(cls, info: ProjectionInfo, evals: np.ndarray, fit: PowerLawFit) -> ProjectionESD:
        """Combine a projection's identity, its full spectrum (all eigenvalues) and its tail fit."""
        lam_max = float(np.max(evals))
        total = float(np.sum(evals))
        return cls(
            name=info.name,
            layer=info.ref.layer,
            kind=str(info.ref.kind),
            shape=(int(info.shape[0]), int(info.shape[1])),
            param_count=info.param_count,
            alpha=fit.alpha,
            xmin=fit.xmin,
            ks_distance=fit.ks_distance,
            num_tail=fit.num_tail,
            spectral_norm=lam_max,
            log_frobenius_norm=math.log10(total),
            stable_rank=total / lam_max,
            alpha_weighted=fit.alpha * math.log10(lam_max),
            num_evals=int(np.asarray(evals).size),
        )

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["shape"] = list(self.shape)
        return row

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> ProjectionESD:
        names = {f.name for f in fields(cls)}
        missing = names - set(row)
        if missing:
            raise ActTailError(f"ESD report row {row.get('name', '?')!r} lacks {', '.join(sorted(missing))}")
        values = {k: row[k] for k in names}
        values["shape"] = (int(row["shape"][0]), int(row["shape"][1]))
        return cls(**values)


@dataclass(frozen=True)
class ESDReport:
    """Alphas and spectral metrics of every projection of one model, from one estimator."""

    model: dict[str, Any]  # ModelDescription.as_dict(): model_id, fingerprint, architecture, ...
    estimator: str
    projections: tuple[ProjectionESD, ...]
    elapsed_s: float

    def alphas(self) -> dict[str, float]:
        return {p.name: p.alpha for p in self.projections}

    def param_counts(self) -> dict[str, int]:
        return {p.name: p.param_count for p in self.projections}

    def per_type_means(self) -> dict[str, float]:
        """Mean alpha per projection kind, in q, k, v, o, gate, up, down order (kinds present only)."""
        means: dict[str, float] = {}
        for kind in PROJECTION_ORDER:
            values = [p.alpha for p in self.projections if p.kind == kind]
            if values:
                means[str(kind)] = float(np.mean(values))
        return means

    def per_layer(self) -> dict[int, dict[str, float]]:
        """Alpha by layer, then kind: ``{layer: {"q": α, …, "down": α}}`` in block order."""
        view: dict[int, dict[str, float]] = {}
        for p in sorted(self.projections, key=lambda p: p.layer):
            view.setdefault(p.layer, {})[p.kind] = p.alpha
        return view

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "version": REPORT_VERSION,
            "model": dict(self.model),
            "estimator": self.estimator,
            "elapsed_s": self.elapsed_s,
            "projections": [p.to_dict() for p in self.projections],
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ESDReport:
        """Rebuild a report written by ``to_dict``; a wrong format or version is rejected."""
        if doc.get("format") != REPORT_FORMAT or doc.get("version") != REPORT_VERSION:
            raise ActTailError(
                f"not an ESD report: expected format {REPORT_FORMAT!r} version {REPORT_VERSION}, "
                f"got {doc.get('format')!r} version {doc.get('version')!r}"
            )
        return cls(
            model=dict(doc["model"]),
            estimator=str(doc["estimator"]),
            projections=tuple(ProjectionESD.from_dict(row) for row in doc["projections"]),
            elapsed_s=float(doc["elapsed_s"]),
        )
