"""Each runtime's gate verdict, read from a manifest: the verdict that decides for that runtime.

The gate judges an artifact on every runtime here and records one run per runtime and contract
(``parity.runs``); ``parity.passed`` is true only when all of them passed. An INT8 file can
pass on OpenVINO and fail on ONNX Runtime (u8 x s8 kernels saturate on CPUs without VNNI): it
is still a proven artifact on OpenVINO. So a runtime's own verdict decides whether the artifact
runs there, and an artifact that passed nowhere stays refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core.errors import UserError
from .registry import RUNTIMES, runtimes_for


def runtime_of(run: Mapping[str, Any]) -> str | None:
    """The registry name of the runtime a gate run judged (from its runner label, e.g.
    ``onnxruntime[CPU,int8]`` -> ``onnxruntime``, ``openvino[cpu,int8]`` -> ``openvino``)."""
    return next((info.name for info in RUNTIMES.values() if info.judged(run)), None)


def verdict_on(manifest: Mapping[str, Any], runtime: str, precision: str) -> bool | None:
    """Whether the gate passed ``runtime`` at ``precision`` (None: it did not judge it there)."""
    runs = [r for r in (manifest.get("parity") or {}).get("runs") or []
            if r.get("precision") == precision and runtime_of(r) == runtime]
    return all(bool(r.get("passed")) for r in runs) if runs else None


def judged_runtimes(manifest: Mapping[str, Any], passed: bool,
                    precision: str | None = None) -> list[str]:
    """The runtimes whose verdict at ``precision`` (default: the artifact's own) is ``passed``,
    in the order the gate ran them."""
    precision = precision or manifest["precision"]
    names = [runtime_of(r) for r in (manifest.get("parity") or {}).get("runs") or []
             if r.get("precision") == precision]
    return [n for n in dict.fromkeys(names)
            if n is not None and verdict_on(manifest, n, precision) is passed]


def usable_runtime(manifest: Mapping[str, Any], runtime: str | None, precision: str | None,
                   where: str, providers: list[str] | None = None) -> str | None:
    """The runtime to load the artifact on, or a :class:`UserError` when its gate refuses it.

    A named runtime (or the ONNX Runtime entry of the ``providers`` named) runs it if its own
    verdict passed (or, where the gate did not judge that runtime, if the artifact passed
    overall). With neither named, an artifact that failed overall runs on the first runtime
    whose verdict passed; one that passed nowhere is refused."""
    parity = manifest.get("parity") or {}
    at = precision or manifest["precision"]
    passed = judged_runtimes(manifest, True, at)
    if runtime is None and providers:
        by_provider = next((i.name for i in RUNTIMES.values()
                            if i.providers and i.providers[0] == providers[0]), None)
        if by_provider is not None:
            usable_runtime(manifest, by_provider, precision, where)
        elif not parity.get("passed"):
            raise UserError(f"refusing {where}: its parity gate failed at export")
        return None
    if runtime is None:
        if parity.get("passed"):
            return None
        direct = [i.name for i in runtimes_for(manifest["format"],
                                               (manifest.get("int8") or {}).get("flavour"),
                                               direct=True)]
        usable = [name for name in passed if name in direct]
        if usable:
            return usable[0]
        failed = judged_runtimes(manifest, False, at)
        raise UserError(f"refusing {where}: its parity gate failed at export"
                        + (f" (on {', '.join(failed)})" if failed else ""))
    verdict = verdict_on(manifest, runtime, at)
    if verdict is True or (verdict is None and parity.get("passed")):
        return runtime
    elsewhere = f"; it passed on {', '.join(passed)}" if passed else ""
    raise UserError(f"refusing {where} on {runtime}: its parity gate "
                    f"{'failed there' if verdict is False else 'failed at export'}{elsewhere}")


__all__ = ["judged_runtimes", "runtime_of", "usable_runtime", "verdict_on"]
