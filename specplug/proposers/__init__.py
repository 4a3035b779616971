"""Proposer registry: method name -> implementing class, imported lazily.

Lazy import keeps ``import specplug`` cheap and lets a config name a method whose optional
dependencies are missing without breaking the others.
"""

from __future__ import annotations

import importlib

from specplug.proposers.base import Budget, Proposer, ProposerOptions, ReqState, VerifyInfo

# name -> "module:Class". A method appears here only when its implementation exists.
_REGISTRY: dict[str, str] = {}

# Methods of the product that may not be implemented in this version (clear error, not KeyError).
KNOWN_METHODS = ("suffix", "recycling", "rasd", "dyspec", "swift", "dllm")


def register(name: str, target: str) -> None:
    """Register ``target`` ("pkg.module:Class") under ``name`` (idempotent)."""
    _REGISTRY[name] = target


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_proposer_class(name: str) -> type[Proposer]:
    if name not in _REGISTRY:
        if name in KNOWN_METHODS:
            raise ValueError(
                f"method: '{name}' is not implemented in this version of specplug "
                f"(available: {', '.join(available_methods()) or 'none'})"
            )
        raise ValueError(
            f"method: unknown method '{name}' (available: {', '.join(available_methods()) or 'none'})"
        )
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = [
    "Budget",
    "Proposer",
    "ProposerOptions",
    "ReqState",
    "VerifyInfo",
    "register",
    "available_methods",
    "get_proposer_class",
    "KNOWN_METHODS",
]

# ---- implemented methods
register("suffix", "specplug.proposers.suffix:SuffixProposer")
register("recycling", "specplug.proposers.recycling:RecyclingProposer")
register("rasd", "specplug.proposers.rasd:RasdProposer")
register("dyspec", "specplug.proposers.dyspec:DySpecProposer")
register("dllm", "specplug.proposers.dllm:DllmProposer")
register("swift", "specplug.proposers.swift:SwiftProposer")
