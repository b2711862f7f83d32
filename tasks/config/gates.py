"""Section ``gates``: the promotion policy, validated gate by gate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if TYPE_CHECKING:
    from tasks.gates.fairness import FairnessParams
from tasks.config.base import MetricName, _Section

GATE_RENAMES = {
    "size": "split into gates.model_size (max_bytes) and gates.predict_memory (max_peak_bytes)",
    "parity": "renamed gates.prediction_parity",
}


class InfraValidationParams(BaseModel):
    """``gates.infra_validation``: run the built serving image before the alias moves
    (tasks/gates/infra_validation.py). ``runtime: null`` does not run it (said in the report);
    ``podman`` runs it on the flow's machine, with the runc runtime (``runtime_binary``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    runtime: Literal["podman"] | None = None
    runtime_binary: str = "runc"
    ready_seconds: float = Field(90.0, gt=0)
    probe_rows: int = Field(50, ge=1)
    tolerance: float = Field(0.0, ge=0.0)  # largest |served - candidate| score allowed
    memory_limit_bytes: int = Field(1 << 30, ge=1 << 26)  # as the manifests' limits (1Gi)
    log_lines: int = Field(30, ge=1)  # the container log's tail in a failed result


class GateParams(_Section):
    """The promotion policy: shared settings, then one section per gate, keyed by the gate's
    name (see ``tasks/gates/``); every gate optional. ``custom`` lists gates by import path."""

    model_config = ConfigDict(extra="allow", frozen=True)

    primary_metric: MetricName = "roc_auc"
    threshold: float = Field(0.5, gt=0.0, lt=1.0)  # serving decision threshold
    fail_run_on_reject: bool = False
    custom: list[dict[str, Any]] = Field(default_factory=list)
    # filled at load (tasks/config/defaults.py): the values that were task defaults, key=value
    defaulted: list[str] = Field(default_factory=list)
    infra_validation: InfraValidationParams = Field(default_factory=InfraValidationParams)

    @model_validator(mode="before")
    @classmethod
    def _gate_sections(cls, raw: Any) -> Any:
        """Validate each gate's section with that gate's params model; fill defaults."""
        from tasks.gates.registry import builtin_gates

        if not isinstance(raw, dict):
            return raw
        gates = builtin_gates()
        out = dict(raw)
        for key in set(out) - set(cls.model_fields) - set(gates):
            hint = GATE_RENAMES.get(key) or f"known gates: {sorted(gates)}"
            raise ValueError(f"{key!r} is not a gate ({hint})")
        for name, gate in gates.items():
            value = out.get(name)
            if isinstance(value, BaseModel):
                continue
            try:
                out[name] = gate.Params.model_validate({} if value is None else value)
            except ValidationError as exc:
                first = exc.errors()[0]
                key = ".".join(str(p) for p in (name, *first["loc"]))
                raise ValueError(f"{key}: {first['msg']}") from exc
        return out

    @field_validator("custom")
    @classmethod
    def _custom_gates(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from tasks.gates.registry import GateLoadError, builtin_gates, validate_custom

        try:
            return validate_custom(value, set(builtin_gates()))
        except GateLoadError as exc:
            raise ValueError(str(exc)) from exc

    def rule(self, name: str) -> BaseModel:
        """The validated params of the built-in gate ``name``."""
        value = (self.model_extra or {}).get(name)
        if not isinstance(value, BaseModel):
            raise KeyError(f"no gate {name!r} in this policy")
        return value

    @property
    def fairness(self) -> FairnessParams:
        """Typed access for other stages (the data stage checks the slice columns exist)."""
        from tasks.gates.fairness import FairnessParams

        rule = self.rule("fairness")
        assert isinstance(rule, FairnessParams)
        return rule

    @property
    def minimums(self) -> dict[str, float]:
        root: dict[str, float] = getattr(self.rule("minimums"), "root", {})
        return root
