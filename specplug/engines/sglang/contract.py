"""Load-time contract check: every SGLang symbol specplug touches must exist with the parameters
(and, for attributes set in __init__, the source lines) the adapter relies on.

The check reads SGLang's source files with ``ast`` instead of importing them: the NGRAM worker
module imports GPU kernels at module level, and the check must give the same answer on a CPU-only
machine (CI) as inside a GPU scheduler process. On any mismatch nothing is registered and the
error names the symbol, what was expected, what was found and the installed SGLang version.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.metadata
import importlib.util
import os

from specplug.engines.sglang import SUPPORTED_SGLANG_VERSIONS

ALLOW_UNTESTED_ENV = "SPECPLUG_ALLOW_UNTESTED_SGLANG"


class SglangContractError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class Requirement:
    """``module:Qualified.name`` must be defined; for functions, ``params`` must be a prefix of its
    parameter names; ``source``: strings its source must contain; ``assigns``: if given, the only
    ``self.<attr>`` the function may assign (an __init__ that specplug's subclass replaces)."""

    target: str
    params: tuple[str, ...] = ()
    source: tuple[str, ...] = ()
    assigns: tuple[str, ...] | None = None


_W = "sglang.srt.speculative.ngram_worker:NGRAMWorker"
NGRAM_WORKER_ATTRIBUTES = ("server_args", "enable_overlap", "_target_worker", "model_runner", "page_size",
                           "draft_token_num", "max_trie_depth", "speculative_num_draft_tokens", "topk",
                           "speculative_num_steps", "device", "adaptive_controller", "_prev_decode_rids",
                           "grammar_tree_host", "ngram_corpus")
REQUIREMENTS = (
    # registration (plugin.py, algorithm.py)
    Requirement("sglang.srt.speculative.spec_info:SpeculativeAlgorithm.register",
                params=("cls", "name", "supports_overlap", "validate_server_args", "spec_class")),
    Requirement("sglang.srt.speculative.spec_info:SpeculativeAlgorithm.from_string", params=("cls", "name")),
    Requirement("sglang.srt.speculative.spec_registry:CustomSpecAlgo.__init__",
                params=("self", "name", "factory", "supports_overlap", "validate_server_args")),
    Requirement("sglang.srt.speculative.spec_registry:CustomSpecAlgo.handle_server_args",
                params=("self", "server_args")),
    # the four enum methods CustomSpecAlgo lacks in 0.5.23 (algorithm.py fills them)
    Requirement("sglang.srt.speculative.spec_info:SpeculativeAlgorithm.create_future_map",
                params=("self", "device", "req_to_token_pool", "needs_cpu_seq_lens", "needs_confidence_relay")),
    Requirement("sglang.srt.managers.overlap_utils:FutureMap.__init__",
                params=("self", "device", "spec_algo", "req_to_token_pool", "needs_cpu_seq_lens",
                        "needs_confidence_relay")),
    Requirement("sglang.srt.speculative.spec_info:SpeculativeAlgorithm.carries_draft_hidden_states", params=("self",)),
    Requirement("sglang.srt.speculative.spec_info:SpeculativeAlgorithm.need_topk", params=("self",)),
    Requirement("sglang.srt.speculative.spec_info:SpeculativeAlgorithm.get_platform_worker_cls", params=("self",)),
    # the worker (worker.py): NGRAM's verify, KV compaction and radix commit, our draft source
    # SpecplugNgramWorker.__init__ replaces this one and sets each of these itself
    Requirement(f"{_W}.__init__", params=("self", "server_args", "gpu_id", "nccl_port", "target_worker"),
                assigns=NGRAM_WORKER_ATTRIBUTES),
    Requirement(f"{_W}._prepare_draft_tokens", params=("self", "batch"),
                source=("use_prev_tokens = self.enable_overlap and not batch.grammar_needs_sync()",
                        "batch.spec_info.accept_tokens", "batch.spec_info.accept_lens",
                        "self.prev_token_ids", "self.prev_accept_lens", "origin_input_ids_unpadded",
                        "output_ids")),
    Requirement(f"{_W}._prepare_for_speculative_decoding", params=("self", "batch"),
                source=("self._prepare_draft_tokens(batch)",)),
    Requirement(f"{_W}._update_ngram_corpus", params=("self", "batch")),  # replaced by a no-op
    Requirement(f"{_W}.forward_batch_generation", params=("self", "batch", "on_publish"),
                source=("self._prepare_for_speculative_decoding(batch)", "self._update_ngram_corpus(batch)",
                        "self.ngram_corpus.erase_match_state", "eagle_sample(")),
    Requirement(f"{_W}.clear_cache_pool", params=("self",), source=("self.ngram_corpus.reset()",)),
    Requirement(f"{_W}.alloc_memory_pool"),
    Requirement("sglang.srt.speculative.base_spec_worker:BaseSpecWorker.__init__", params=("self",)),
    Requirement("sglang.srt.runtime_context:get_spec"),
    Requirement("sglang.srt.runtime_context:get_schedule"),
    Requirement("sglang.srt.runtime_context:get_device"),
    Requirement("sglang.srt.managers.schedule_batch:Req.__init__",
                source=("self.origin_input_ids_unpadded =", "self.output_ids =", "self.rid =")),
)


def installed_version() -> str | None:
    try:
        return importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=None)
def _module_source(module: str) -> tuple[str, ast.Module]:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        raise LookupError(f"module {module} not found")
    with open(spec.origin, encoding="utf-8") as f:
        text = f.read()
    return text, ast.parse(text)


def _find(tree: ast.AST, qualname: str):
    node = tree
    for part in qualname.split("."):
        body = getattr(node, "body", [])
        found = None
        for child in body:
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and child.name == part:
                found = child
            elif isinstance(child, (ast.Assign, ast.AnnAssign)) and part in _assigned_names(child):
                found = child
        if found is None:
            return None
        node = found
    return node


def _assigned_names(stmt) -> set[str]:
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
    return {t.id for t in targets if isinstance(t, ast.Name)}


def self_assignments(func: ast.AST) -> set[str]:
    """Attribute names assigned on ``self`` anywhere in ``func``."""
    return {n.attr for n in ast.walk(func) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
            and isinstance(n.value, ast.Name) and n.value.id == "self"}


def check_requirement(req: Requirement) -> str | None:
    """None if met, else what is wrong."""
    module, qualname = req.target.split(":")
    try:
        text, tree = _module_source(module)
    except (LookupError, ImportError, SyntaxError) as e:
        return f"{req.target}: cannot read module {module} ({e})"
    node = _find(tree, qualname)
    if node is None:
        return f"{req.target}: not defined"
    if req.params:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return f"{req.target}: expected a function, found {type(node).__name__}"
        a = node.args
        names = tuple(p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs))
        if names[: len(req.params)] != req.params:
            return f"{req.target}: expected parameters {req.params}, found {names}"
    if req.assigns is not None:
        extra = sorted(self_assignments(node) - set(req.assigns))
        if extra:
            return f"{req.target}: now also sets {['self.' + a for a in extra]}, which specplug's replacement does not"
    if req.source:
        seg = ast.get_source_segment(text, node) or ""
        missing = [s for s in req.source if s not in seg]
        if missing:
            return f"{req.target}: source no longer contains {missing}"
    return None


def contract_errors(requirements=None) -> list[str]:
    """Everything that does not match, version first (empty list: all good)."""
    requirements = REQUIREMENTS if requirements is None else requirements
    version = installed_version()
    if version is None:
        return ["sglang is not installed"]
    errors = []
    if version not in SUPPORTED_SGLANG_VERSIONS and os.environ.get(ALLOW_UNTESTED_ENV) != "1":
        errors.append(f"sglang {version} is not a supported version (supported: "
                      f"{', '.join(SUPPORTED_SGLANG_VERSIONS)}; set {ALLOW_UNTESTED_ENV}=1 to try anyway, "
                      "the symbol checks below still apply)")
    errors += [e for e in (check_requirement(r) for r in requirements) if e]
    return errors


def check_contract(requirements=None) -> None:
    errors = contract_errors(requirements)
    if errors:
        raise SglangContractError(
            f"specplug's SGLang adapter does not match the installed sglang {installed_version()}; "
            "nothing was registered:\n  - " + "\n  - ".join(errors))
