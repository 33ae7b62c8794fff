"""Stored results → ``acttail.plots`` figures → cached image responses (API and dashboard share these).

Callers load the rows with the team's visibility already applied; these functions only turn rows
into plot input, and render through ``api.image_cache`` (ETag over that input, LRU, 304).

What the store keeps decides what can be drawn: ESD runs hold the fit statistics per projection
(alpha, x_min, KS distance, norms) and, since revision 20261130_0002, every eigenvalue as float32
bytes; the ESD histogram of a run stored without them answers 404 saying so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from fastapi import Response
from sqlalchemy.orm import Session

from acttail.errors import ActTailError
from acttail.store import catalog, results
from acttail.store.errors import NotFoundError
from acttail.store.orm import AllocationRow, Benchmark, EsdProjection, EsdRun
from acttail.store.spectra import decode_eigenvalues
from api.image_cache import ImageCache, image_response

ImageFormat = Literal["svg", "png"]
MAX_SWEEP_ROWS = 5000  # benchmark rows read for one sweep plot (a sweep has tens)
_SETTINGS_IGNORED = frozenset({"tokens_scored"})  # a consequence of the settings, not one of them


class UndrawableError(ActTailError):
    """Stored data that ``acttail.plots`` refuses to draw (e.g. non-standard projection names): 422."""


def _render(build: Any, fmt: str) -> bytes:
    from acttail import plots  # matplotlib: imported on the first picture, not at API start

    try:
        return plots.render_bytes(build(plots), fmt)
    except plots.PlotError as exc:
        raise UndrawableError(f"cannot draw the stored data: {exc}") from None


# --------------------------------------------------------------------------------------------
# alpha per layer


def alpha_rows(run: EsdRun) -> list[dict[str, Any]]:
    """(layer, kind, alpha) of every projection with a fitted alpha (a failed fit stores NULL)."""
    return [{"layer": p.layer, "kind": p.kind, "alpha": p.alpha} for p in run.projections if p.alpha is not None]


def alphas_image(run: EsdRun, fmt: ImageFormat, *, cache: ImageCache, if_none_match: str | None) -> Response:
    rows = alpha_rows(run)
    if not rows:
        raise NotFoundError(f"ESD run {run.id} of {run.model.model_id!r} has no fitted alpha to plot")
    title = f"{run.model.model_id} · α per layer · estimator {run.estimator}"
    return image_response(
        cache, figure="alphas", fmt=fmt, payload={"rows": rows, "title": title}, if_none_match=if_none_match,
        render=lambda: _render(lambda plots: plots.plot_alphas(rows, title=title), fmt),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# ESD of one projection


@dataclass(frozen=True)
class StoredFit:
    """A projection's stored power-law fit, in the shape ``acttail.plots.plot_esd`` reads."""

    alpha: float
    xmin: float
    num_tail: int | None


def _projection(run: EsdRun, name: str) -> EsdProjection:
    row = next((p for p in run.projections if p.name == name), None)
    if row is None:
        names = [p.name for p in run.projections]
        shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
        raise NotFoundError(f"no projection {name!r} in ESD run {run.id} (projections: {shown})")
    return row


def _fit_within(values: Any, fit: StoredFit, floor: float) -> StoredFit:
    """x_min is one of the fp64 eigenvalues; stored as float32 the smallest or largest of them can
    round to just past it, which ``plot_esd`` would refuse. Pull x_min back by that rounding only
    (2⁻²³ relative); anything further off is a real mismatch and stays one."""
    kept = values[values > floor]
    if kept.size == 0:
        return fit
    low, high = float(kept.min()), float(kept.max())
    tolerance = 2.0**-23
    if low * (1 - tolerance) <= fit.xmin < low:
        return StoredFit(fit.alpha, low, fit.num_tail)
    if high < fit.xmin <= high * (1 + tolerance):
        return StoredFit(fit.alpha, high, fit.num_tail)
    return fit


def esd_image(
    run: EsdRun, projection: str, fmt: ImageFormat, *, db_session: Session, cache: ImageCache,
    if_none_match: str | None,
) -> Response:  # fmt: skip
    """The ESD histogram of one projection with its stored fit; the ETag covers the eigenvalue
    bytes (by sha256), the fit and the title, so a 304 reads the bytes but draws nothing."""
    row = _projection(run, projection)
    blob = catalog.projection_eigenvalues(run.id, projection, db_session=db_session)
    if blob is None:
        raise NotFoundError(
            f"eigenvalues are not stored: ESD run {run.id} was stored without them (before they were kept) and "
            f"has only the fit statistics of {projection} (alpha, x_min, KS distance, norms; see "
            f"/v1/models/{run.model.fingerprint}/alphas); draw its ESD locally with `acttail alphas MODEL --plot DIR`"
        )
    if row.alpha is None or row.xmin is None:
        raise NotFoundError(f"no power-law fit to draw: the fit of {projection} failed in ESD run {run.id}")
    fit = StoredFit(row.alpha, row.xmin, row.num_tail)
    title = f"{run.model.model_id} · {projection}\nESD, α = {row.alpha:.2f} (estimator {run.estimator})"
    payload = {"eigenvalues_sha256": hashlib.sha256(blob).hexdigest(), "fit": asdict(fit), "title": title}

    def draw(plots: Any) -> Any:
        values = decode_eigenvalues(blob)
        return plots.plot_esd(values, _fit_within(values, fit, plots.EVALS_FLOOR), title=title)

    return image_response(
        cache, figure="esd", fmt=fmt, payload=payload, if_none_match=if_none_match,
        render=lambda: _render(draw, fmt),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# allocation heatmap


def allocation_image(row: AllocationRow, fmt: ImageFormat, *, cache: ImageCache, if_none_match: str | None) -> Response:
    doc = row.document
    drawn = {key: doc.get(key) for key in ("sparsities", "target", "method", "model_id")}
    return image_response(
        cache, figure="allocation", fmt=fmt, payload=drawn, if_none_match=if_none_match,
        render=lambda: _render(lambda plots: plots.plot_allocation(drawn), fmt),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# perplexity (and mean zero-shot accuracy) against sparsity


def _settings_key(row: Benchmark) -> str:
    kept = {k: v for k, v in (row.settings or {}).items() if k not in _SETTINGS_IGNORED}
    return json.dumps(kept, sort_keys=True, default=str)


def _preferred(rows: Iterable[Benchmark], team_id: int) -> Benchmark:
    """The team's own measurement over a shared one, then the newest."""
    return max(rows, key=lambda r: (r.team_id == team_id, r.created_at, r.id))


def _one_per_variant(rows: Sequence[Benchmark], team_id: int) -> dict[int | None, Benchmark]:
    """allocation_id (None = dense) → one row, from the settings group with the most sparse variants."""
    groups: dict[str, list[Benchmark]] = {}
    for row in rows:
        groups.setdefault(_settings_key(row), []).append(row)

    def rank(group: list[Benchmark]) -> tuple[int, int, Any, int]:
        variants = {r.allocation_id for r in group}
        newest = max(group, key=lambda r: (r.created_at, r.id))
        return len(variants - {None}), len(variants), newest.created_at, newest.id

    best = max(groups.values(), key=rank)
    by_variant: dict[int | None, list[Benchmark]] = {}
    for row in best:
        by_variant.setdefault(row.allocation_id, []).append(row)
    return {variant: _preferred(group, team_id) for variant, group in by_variant.items()}


def _labels(allocations: Iterable[AllocationRow]) -> dict[int, str]:
    """Series label per allocation: its method, plus the settings that tell apart configs of one method."""
    allocations = list(allocations)
    configs: dict[str, dict[str, dict[str, Any]]] = {}
    for a in allocations:
        config = {"estimator": a.estimator, **(a.params or {})}
        configs.setdefault(a.method, {})[json.dumps(config, sort_keys=True, default=str)] = config
    labels: dict[int, str] = {}
    for a in allocations:
        variants = list(configs[a.method].values())
        if len(variants) == 1:
            labels[a.id] = a.method
            continue
        mine = {"estimator": a.estimator, **(a.params or {})}
        differing = sorted(k for k in mine if any(v.get(k) != mine[k] for v in variants))
        labels[a.id] = f"{a.method} ({', '.join(f'{k}={mine[k]}' for k in differing)})"
    return labels


def sweep_rows(
    ppl: Sequence[Benchmark], accuracy: Sequence[Benchmark], team_id: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows for ``acttail.plots.plot_sweep`` from stored perplexity and mean-accuracy benchmarks,
    and the perplexity settings they were measured with.

    One perplexity setting is drawn (the one covering the most variants, then the newest):
    numbers measured with different windows or token budgets are not comparable. Each variant
    (dense or one allocation) gets one point, preferring the team's own measurement; mean
    zero-shot accuracy is added from the zero-shot setting that covers the most variants.
    """
    chosen = _one_per_variant(ppl, team_id)
    acc = _one_per_variant(accuracy, team_id) if accuracy else {}
    labels = _labels(row.allocation for row in chosen.values() if row.allocation is not None)
    points: dict[tuple[str, float | None], tuple[Benchmark, dict[str, Any]]] = {}
    for variant, row in chosen.items():
        accuracy_row = acc.get(variant)
        point: dict[str, Any] = {
            "perplexity": row.value,
            "mean_accuracy": accuracy_row.value if accuracy_row is not None else None,
        }
        if row.allocation is None:
            point.update(method="dense", dense=True)
            key: tuple[str, float | None] = ("dense", None)
        else:
            point.update(method=labels[row.allocation.id], target=row.allocation.target)
            key = (point["method"], row.allocation.target)
        # Equal configurations from two teams (own and a shared copy): keep the preferred one.
        if key not in points or _preferred([points[key][0], row], team_id) is row:
            points[key] = (row, point)
    settings = dict(next(iter(chosen.values())).settings or {})
    return [point for _, point in sorted(points.values(), key=lambda item: item[0].id)], settings


def _sweep_title(model_id: str, settings: dict[str, Any]) -> str:
    parts = [f"{model_id} · perplexity"]
    if settings.get("dataset"):
        parts.append(str(settings["dataset"]))
    if settings.get("seqlen"):
        parts.append(f"seqlen {settings['seqlen']}")
    if settings.get("max_tokens"):
        parts.append(f"{settings['max_tokens']} tokens")
    return " · ".join(parts)


def sweep_input(model: str, *, team_id: int, db_session: Session) -> tuple[list[dict[str, Any]], str]:
    """Sweep rows and title for a model (ID or fingerprint) from the benchmarks the team can see.

    A model ID naming several fingerprints (revisions) draws the newest one that has a sparse
    perplexity measurement.
    """
    ppl, _ = results.list_benchmarks(
        team_id=team_id, model=model, kind="perplexity", metric="ppl", limit=MAX_SWEEP_ROWS, db_session=db_session
    )
    sparse = sorted((row for row in ppl if row.allocation_id is not None), key=lambda r: r.id, reverse=True)
    if not sparse:
        raise NotFoundError(f"no perplexity benchmark of a sparse allocation of model {model!r} to plot")
    fingerprint = sparse[0].model.fingerprint
    ppl = [row for row in ppl if row.model.fingerprint == fingerprint]
    accuracy, _ = results.list_benchmarks(
        team_id=team_id, model=fingerprint, kind="zeroshot", metric="mean_accuracy", limit=MAX_SWEEP_ROWS,
        db_session=db_session,
    )  # fmt: skip
    rows, settings = sweep_rows(ppl, accuracy, team_id)
    return rows, _sweep_title(sparse[0].model.model_id, settings)


def sweep_image(
    model: str, fmt: ImageFormat, *, team_id: int, db_session: Session, cache: ImageCache, if_none_match: str | None
) -> Response:
    rows, title = sweep_input(model, team_id=team_id, db_session=db_session)
    return image_response(
        cache, figure="sweep", fmt=fmt, payload={"rows": rows, "title": title}, if_none_match=if_none_match,
        render=lambda: _render(lambda plots: plots.plot_sweep(rows, title=title), fmt),
    )  # fmt: skip
