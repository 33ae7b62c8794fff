"""The dashboard's job form: text fields → ``JobRequest``, with messages that name the form's labels."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import pydantic

from acttail.errors import ActTailError
from acttail.registry import DEFAULT_METHOD, ESTIMATORS, method_names
from acttail.store.requests import JobRequest

DIRECTIONS = ("higher_alpha_sparser", "lower_alpha_sparser")
LABELS = {
    "model_id": "Model ID", "estimator": "Estimator", "targets": "Target sparsities", "method": "Method",
    "epsilon": "Epsilon", "direction": "Direction", "shared": "Share results",
    "evaluations.perplexity.seqlen": "Perplexity window (tokens)",
    "evaluations.perplexity.max_tokens": "Perplexity token budget",
}  # fmt: skip
MAX_FIELD = 600


class FormError(ActTailError):
    """The form cannot become a job request; the message names the field as the form labels it (422)."""


def _number(label: str, text: str, cast: type[int] | type[float]) -> Any:
    try:
        return cast(text.strip())
    except ValueError:
        raise FormError(f"{label}: {text.strip()!r} is not {'an integer' if cast is int else 'a number'}") from None


def _message(exc: pydantic.ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        loc = [str(p) for p in error.get("loc", ())]
        field = ".".join(p for p in loc if not p.isdigit())
        label = LABELS.get(field, field)
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        value = error.get("input")
        suffix = f" (got {value!r})" if (loc and loc[-1].isdigit()) or isinstance(value, int | float) else ""
        parts.append(f"{label}: {message}{suffix}" if field else message)
    return "; ".join(parts)


@dataclass
class JobForm:
    """What the user typed, kept as text so the page can show it again next to an error."""

    model_id: str = ""
    estimator: str = "ks"
    targets: str = "0.5, 0.7"
    method: str = DEFAULT_METHOD
    epsilon: str = ""  # empty: the method's default (only the acttail rules read it)
    direction: str = ""
    perplexity: bool = True
    seqlen: str = "512"
    max_tokens: str = "16384"
    shared: bool = False

    def values(self) -> dict[str, Any]:
        return asdict(self)

    def to_request(self) -> JobRequest:
        """The job request, or FormError with one readable line."""
        if not self.model_id.strip():
            raise FormError("Model ID: enter a bundled alias, a hub ID 'org/name', or a path under the model roots")
        texts = [t for t in re.split(r"[,\s;]+", self.targets.strip()) if t]
        if not texts:
            raise FormError("Target sparsities: enter at least one, e.g. 0.5, 0.7")
        targets = [_number(LABELS["targets"], t, float) for t in texts]
        evaluations: dict[str, Any] = {}
        if self.perplexity:
            evaluations["perplexity"] = {
                "seqlen": _number(LABELS["evaluations.perplexity.seqlen"], self.seqlen, int),
                "max_tokens": _number(LABELS["evaluations.perplexity.max_tokens"], self.max_tokens, int),
            }
        raw: dict[str, Any] = {
            "model_id": self.model_id, "estimator": self.estimator, "targets": targets, "method": self.method,
            "evaluations": evaluations, "shared": self.shared,
        }  # fmt: skip
        if self.epsilon.strip():
            raw["epsilon"] = _number(LABELS["epsilon"], self.epsilon, float)
        if self.direction:
            raw["direction"] = self.direction
        try:
            return JobRequest.model_validate(raw)
        except pydantic.ValidationError as exc:
            raise FormError(_message(exc)) from None


CHOICES = {"estimators": ESTIMATORS, "methods": method_names(), "directions": DIRECTIONS}
