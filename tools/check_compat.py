"""Static guard: the sources run on CPython 3.8 and torch 2.0 / torchvision 0.15 (``make test`` runs it).

``python -m tools.check_compat [PATH ...]`` (default: the project's ``pipeline``, ``train``, ``tools``,
``benchmarks`` and ``tests``) prints one line per finding, ``FILE:LINE: what; what to do``, and exits 1 if there is
any. Two checks:

1. **Python**: `vermin <https://github.com/netromdk/vermin>`_ (a well-kept static checker of the minimum Python
   version) with target 3.8 over every file; its ``# novermin`` exemption is honoured in :mod:`pipeline.compat`
   only, the one module that holds the feature-detected fallbacks.
2. **This project's rules**, from the syntax tree:

   * every module that defines anything starts with ``from __future__ import annotations`` (so ``list[int]`` and
     ``X | None`` annotations stay strings on 3.8), and builtin generics (``list[int]``) or ``X | None`` unions
     appear only in annotations;
   * outside :mod:`pipeline.compat` (and outside ``tests/``, whose uses are guarded in place), none of the
     torch / torchvision APIs that torch 2.0 / torchvision 0.15 lack, listed in :data:`NEWER_ATTRIBUTES` and
     :data:`NEWER_KEYWORDS`, nor ``torchvision.io.decode_jpeg`` (its batched form is newer): each has a fallback in
     :mod:`pipeline.compat`, named in the finding.
"""

from __future__ import annotations

import argparse
import ast
import io
import subprocess
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Iterable

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PATHS = ("pipeline", "train", "tools", "benchmarks", "tests")
COMPAT = REPO / "pipeline" / "compat.py"
MIN_PYTHON = "3.8"

#: Dotted attribute suffixes (``a.b.c``) newer than torch 2.0 / torchvision 0.15 / Python 3.8, with the
#: :mod:`pipeline.compat` name to use instead.
NEWER_ATTRIBUTES = MappingProxyType({
    "torch.amp.GradScaler": "pipeline.compat.grad_scaler (torch.amp.GradScaler is torch 2.3+)",
    "torch.cuda.amp.GradScaler": "pipeline.compat.grad_scaler",
    "torch.cpu.amp.GradScaler": "pipeline.compat.grad_scaler",
    "torch.compile": "pipeline.compat.compile_model",
    "torch.cuda.device_memory_used": "train.memory's readers (torch.cuda.device_memory_used is torch 2.6+)",
    "torch.get_default_device": "an explicit device (torch.get_default_device is torch 2.3+)",
    "torch.accelerator": "torch.cuda (torch.accelerator is torch 2.6+)",
    "torch.serialization.add_safe_globals": "plain tensors and Python values in checkpoints (torch 2.4+)",
    "_new_shared": "pipeline.compat.new_shared_uint8 (a private entry point)",
    "_upsample_bilinear2d_aa": "pipeline.compat.upsample_aa_out (a private entry point)",
    "torch._foreach_copy_": "pipeline.compat.foreach_copy_ (torch 2.1+)",
    "functools.cache": "pipeline.compat.cache (functools.cache is Python 3.9+)",
    "argparse.BooleanOptionalAction": "pipeline.compat.BooleanOptionalAction (Python 3.9+)",
    "removesuffix": "pipeline.compat.remove_suffix (str.removesuffix is Python 3.9+)",
    "removeprefix": "text[len(prefix):] after startswith (str.removeprefix is Python 3.9+)",
    "io.decode_jpeg": "pipeline.compat.decode_jpegs / decode_jpeg_one (a list is torchvision 0.19+)",
})
#: (call name suffix, keyword) pairs newer than torch 2.0 / torchvision 0.15 / Python 3.8.
NEWER_KEYWORDS = MappingProxyType({
    ("SGD", "fused"): "pipeline.compat.make_sgd (SGD(fused=) is torch 2.3+)",
    ("init_process_group", "device_id"): "pipeline.compat.init_process_group (device_id= is torch 2.3+)",
    ("ImageFolder", "allow_empty"): "pipeline.compat.image_folder_class (allow_empty= is torchvision 0.18+)",
    ("DatasetFolder", "allow_empty"): "pipeline.compat.image_folder_class (allow_empty= is torchvision 0.18+)",
    ("zip", "strict"): "pipeline.compat.zip_strict (zip(strict=) is Python 3.10+)",
    ("Popen", "process_group"): "pipeline.compat.new_process_group_kwargs (process_group= is Python 3.11+)",
    ("DataLoader", "in_order"): "no in_order= (torch 2.6+)",
    ("load", "mmap"): "torch.load without mmap= (torch 2.1+)",
    ("shutdown", "cancel_futures"): "pipeline.compat.shutdown_cancelling (cancel_futures= is Python 3.9+)",
})
#: Modules newer than Python 3.8 / torch 2.0, imported only through pipeline.compat.
NEWER_IMPORTS = MappingProxyType({
    "tomllib": "pipeline.compat.toml_loads (tomllib is Python 3.11+; tomli before)",
})
BUILTIN_GENERICS = frozenset({"list", "dict", "tuple", "set", "frozenset", "type"})
TYPE_NAMES = BUILTIN_GENERICS | frozenset({"int", "float", "str", "bytes", "bool", "object"})


@dataclass(frozen=True)
class Finding:
    """One place that would not run on the oldest supported stack: ``path:line: message``."""

    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        try:
            shown = self.path.resolve().relative_to(REPO)
        except ValueError:
            shown = self.path
        return f"{shown}:{self.line}: {self.message}"


def python_files(paths: Iterable[Path]) -> list[Path]:
    """The ``.py`` files under ``paths`` (files or folders), sorted, build outputs and venvs left out."""
    found = set()
    for path in paths:
        if path.is_file() and path.suffix == ".py":
            found.add(path.resolve())
        elif path.is_dir():
            found.update(source.resolve() for source in path.rglob("*.py")
                         if not any(part.startswith(".") or part in ("build", "__pycache__") for part in source.parts))
    return sorted(found)


def vermin_findings(files: list[Path]) -> list[Finding]:
    """vermin's violations of the 3.8 target, one per line it names (parsable output: ``path:line:col:py2:py3:
    feature``).

    Raises:
        RuntimeError: vermin is not installed (it comes with the ``[dev]`` extra).
    """
    if not files:
        return []
    code = "import sys; from vermin.main import main; sys.argv[0] = 'vermin'; sys.exit(main())"
    cmd = [sys.executable, "-c", code, f"-t={MIN_PYTHON}-", "--violations", "--no-tips", "--format", "parsable",
           "--backport", "typing_extensions", *map(str, files)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if "No module named 'vermin'" in out.stderr:
        raise RuntimeError("vermin is not installed: pip install -e '.[dev]'")
    findings = []
    for line in out.stdout.splitlines():
        path, _, rest = line.partition(".py:")
        fields = rest.split(":", 4)
        if not path or len(fields) < 5 or not fields[0].isdigit():
            continue  # the summary lines (no line number)
        needs = fields[3].lstrip("!") or fields[2]
        findings.append(Finding(Path(path + ".py"), int(fields[0]),
                                f"{fields[4].strip()} needs Python {needs}, the oldest supported is {MIN_PYTHON}; "
                                f"use or add a fallback in pipeline/compat.py"))
    return findings


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` of a Name / Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _import_aliases(tree: ast.AST) -> dict:
    """Local name → what it stands for, from ``import a.b as x`` and ``from a import b [as x]``."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def _resolve(dotted: str, aliases: dict) -> str:
    """``dotted`` with its first name replaced by what an import bound it to."""
    head, _, rest = dotted.partition(".")
    full = aliases.get(head)
    return dotted if full is None else (f"{full}.{rest}" if rest else full)


def _annotation_nodes(tree: ast.AST) -> set[int]:
    """ids of every node inside an annotation (arguments, returns, annotated assignments)."""
    roots: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            every = [*getattr(args, "posonlyargs", []), *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
            roots += [a.annotation for a in every if a is not None and a.annotation is not None]
            if node.returns is not None:
                roots.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
    return {id(n) for root in roots for n in ast.walk(root)}


def _defines_anything(tree: ast.Module) -> bool:
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.AnnAssign))
               for n in ast.walk(tree))


def _has_future_annotations(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations"
                                                                               for a in n.names)
               for n in tree.body)


def _suffix_match(dotted: str, suffix: str) -> bool:
    return dotted == suffix or dotted.endswith("." + suffix)


def _vermin_exemptions(text: str) -> list[int]:
    """Lines whose comment holds vermin's exemption marker (``novermin`` / ``novm``)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return []
    return [token.start[0] for token in tokens if token.type == tokenize.COMMENT
            and any(word in ("novermin", "novm") for word in token.string.lstrip("#").split())]


def rule_findings(path: Path, text: str, exempt_apis: bool) -> list[Finding]:
    """The project's own rules (module docstring) for one file's source ``text``; ``exempt_apis``: the file may use
    the newer APIs (pipeline/compat.py, tests)."""
    try:
        tree = ast.parse(text, str(path))
    except SyntaxError as exc:
        return [Finding(path, exc.lineno or 0, f"does not parse: {exc.msg}")]
    out = _module_findings(path, tree, text)
    in_annotation = _annotation_nodes(tree)
    aliases = _import_aliases(tree)
    for node in ast.walk(tree):
        if id(node) in in_annotation:
            continue
        out += _syntax_findings(path, node)
        if not exempt_apis:
            out += _api_findings(path, node, aliases)
    return out


def _module_findings(path: Path, tree: ast.Module, text: str) -> list[Finding]:
    """A module that defines anything without ``from __future__ import annotations``; vermin exemptions outside
    pipeline/compat.py."""
    out: list[Finding] = []
    if _defines_anything(tree) and not _has_future_annotations(tree):
        out.append(Finding(path, 1, "no 'from __future__ import annotations': annotations like list[int] or "
                                    "X | None fail at import on Python 3.8; add it after the docstring"))
    if path.resolve() != COMPAT.resolve():
        for line in _vermin_exemptions(text):
            out.append(Finding(path, line, "a vermin exemption outside pipeline/compat.py: put the newer API "
                                           "behind a fallback there"))
    return out


def _syntax_findings(path: Path, node: ast.AST) -> list[Finding]:
    """``list[int]`` or ``X | None`` in ``node`` (a node outside any annotation)."""
    line = getattr(node, "lineno", 0)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in BUILTIN_GENERICS:
        return [Finding(path, line, f"{node.value.id}[...] outside an annotation needs Python 3.9; use "
                                    f"typing.{node.value.id.capitalize()}[...]")]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and any(
            (isinstance(side, ast.Constant) and side.value is None)
            or (isinstance(side, ast.Name) and side.id in TYPE_NAMES) for side in (node.left, node.right)):
        return [Finding(path, line, "a 'X | Y' type union outside an annotation needs Python 3.10; use a tuple of "
                                    "types or typing.Union")]
    return []


def _api_findings(path: Path, node: ast.AST, aliases: dict) -> list[Finding]:
    """An API newer than the oldest supported stack used by ``node``: an attribute, a call's keyword, an import."""
    if isinstance(node, ast.Attribute):
        return _attribute_findings(path, node, aliases)
    if isinstance(node, ast.Call):
        return _keyword_findings(path, node)
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return _import_findings(path, node)
    return []


def _attribute_findings(path: Path, node: ast.Attribute, aliases: dict) -> list[Finding]:
    dotted = _resolve(_dotted(node) or node.attr, aliases)
    if node.attr == "uuid" and isinstance(node.value, ast.Call) and \
            (_dotted(node.value.func) or "").endswith("get_device_properties"):
        return [Finding(path, node.lineno, "get_device_properties(...).uuid: not in torch 2.0 / 2.1; use "
                                           "pipeline.compat.cuda_device_uuid")]
    for suffix, instead in NEWER_ATTRIBUTES.items():
        if _suffix_match(dotted, suffix) or ("." not in suffix and node.attr == suffix):
            return [Finding(path, node.lineno, f"{dotted}: not in the oldest supported stack; use {instead}")]
    return []


def _keyword_findings(path: Path, node: ast.Call) -> list[Finding]:
    name = _dotted(node.func) or (node.func.attr if isinstance(node.func, ast.Attribute) else "")
    return [Finding(path, node.lineno, f"{name}({keyword}=...): not in the oldest supported stack; use {instead}")
            for (callee, keyword), instead in NEWER_KEYWORDS.items()
            if _suffix_match(name, callee) and any(k.arg == keyword for k in node.keywords)]


def _import_findings(path: Path, node: ast.Import | ast.ImportFrom) -> list[Finding]:
    out: list[Finding] = []
    line = node.lineno
    if isinstance(node, ast.ImportFrom):  # from torch.amp import GradScaler: the name it binds
        for alias in node.names:
            full = f"{node.module or ''}.{alias.name}"
            out += [Finding(path, line, f"from {node.module} import {alias.name}: not in the oldest supported "
                                        f"stack; use {instead}")
                    for suffix, instead in NEWER_ATTRIBUTES.items() if "." in suffix and _suffix_match(full, suffix)]
    modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
    out += [Finding(path, line, f"import {module}: use {NEWER_IMPORTS[module.split('.')[0]]}")
            for module in modules if module.split(".")[0] in NEWER_IMPORTS]
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torchvision.io") and any(
            alias.name == "decode_jpeg" for alias in node.names):
        out.append(Finding(path, line, f"torchvision.io.decode_jpeg: use {NEWER_ATTRIBUTES['io.decode_jpeg']}"))
    return out


def check(paths: Iterable[Path]) -> list[Finding]:
    """Every finding in ``paths`` (files or folders), sorted by file and line."""
    files = python_files(paths)
    tests = (REPO / "tests").resolve()
    findings = vermin_findings(files)
    for source in files:
        exempt = source == COMPAT.resolve() or tests in source.parents
        findings += rule_findings(source, source.read_text(encoding="utf-8"), exempt)
    return sorted(set(findings), key=lambda x: (str(x.path), x.line, x.message))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.check_compat", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help=f"files or folders (default: {', '.join(DEFAULT_PATHS)})")
    args = parser.parse_args(argv)
    paths = args.paths or [REPO / d for d in DEFAULT_PATHS]
    try:
        findings = check(paths)
    except RuntimeError as exc:
        print(f"check_compat: error: {exc}", file=sys.stderr)
        return 2
    for finding in findings:
        print(finding)
    n = len(python_files(paths))
    print(f"check_compat: {len(findings)} finding(s) in {n} file(s) (Python >= {MIN_PYTHON}, torch >= 2.0, "
          f"torchvision >= 0.15)")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
