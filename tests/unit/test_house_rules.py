"""The shape of the code, checked: imports follow the data (the README's Layout diagram, written here as
:data:`STAGES` and :data:`MAY_IMPORT`), no import cycle, modules and functions of a size one can hold in mind, no
module-level mutable state, and a README Layout section that names every module that exists and none that does not.

Each stage is a set of module-name prefixes (the longest matching prefix wins). A module may import its own stage
and the stages :data:`MAY_IMPORT` lists for it; imports inside functions count too (they are dependencies all the
same). The offline branch (source → shard) and the online branch (read → backends → train) meet only in the
dataset contract: a reader never imports the writer.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "train", "tools")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 50
MAX_PARAMETERS = 7  # self / cls not counted; *args and **kwargs count one each

# stage -> the module-name prefixes it holds (the longest matching prefix decides a module's stage)
STAGES = {
    "base": ("pipeline", "pipeline.compat", "pipeline.fsio", "pipeline.progress", "pipeline.hostinfo", "pipeline.jpeg",
             "pipeline.schema"),
    "contract": ("pipeline.dataset",),
    "source": ("pipeline.source",),
    "shard": ("pipeline.shard",),
    "read": ("pipeline.read",),
    "backends": ("pipeline.backends",),
    "train-base": ("train", "train.accelerator", "train.precision", "train.distributed", "train.memory",
                   "train.clock", "train.preempt", "train.model", "train.recipe", "train.checkpoint", "train.steplog",
                   "train.sinks", "train.progress", "train.plot", "train.environment", "train.flagperf_case"),
    "config": ("train.config",),
    "build": ("train.build", "train.rundir"),
    "loop": ("train.loop", "train.trainer"),
    "metrics": ("train.metrics", "train.verdict"),
    "report": ("train.report", "train.assemble"),
    "run": ("train.run",),
    "analysis": ("train.iobench", "train.flagperf_page"),
    "tools": ("tools",),
}
_PIPELINE_ONLINE = ("base", "contract", "read", "backends")
_TRAIN_CHAIN = ("train-base", "config", "build", "loop", "metrics", "report", "run", "analysis", "tools")
# stage -> the other stages it may import
MAY_IMPORT = {
    "base": (),
    "contract": ("base",),
    "source": ("base", "contract"),
    "shard": ("base", "contract", "source"),
    "read": ("base", "contract"),
    "backends": ("base", "contract", "read", "source"),  # the folder backend reads an image tree as the source does
    **{stage: _PIPELINE_ONLINE + _TRAIN_CHAIN[:i] for i, stage in enumerate(_TRAIN_CHAIN)},
}
MAY_IMPORT["tools"] = tuple(STAGES)  # console scripts: arguments -> config -> one call into any stage


def _module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    return files


MODULES = _module_files()


def _stage(module: str) -> str:
    best, stage = -1, None
    for name, prefixes in STAGES.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, stage = len(prefix), name
    if stage is None:
        raise AssertionError(f"{module}: in no stage of tests/unit/test_house_rules.py STAGES: place it there and "
                             "in the README's Layout")
    return stage


def _imports(module: str, path: Path) -> set[str]:
    """The project modules ``module`` imports (at any depth of its code), as dotted names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names]
            found.update(n if n in MODULES else target for n in names)  # `from pkg import module` names the module
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def test_imports_follow_the_data():
    wrong = []
    for module, targets in sorted(GRAPH.items()):
        stage = _stage(module)
        for target in sorted(targets):
            other = _stage(target)
            if other != stage and other not in MAY_IMPORT[stage]:
                wrong.append(f"{module} ({stage}) imports {target} ({other})")
    assert not wrong, "\n" + "\n".join(wrong)


def test_no_import_cycle():
    """Module-level cycles between project modules (a package importing its own submodules aside)."""
    state, cycles = {}, []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH.get(module, ())):
            if target not in GRAPH or module.startswith(target + "."):  # a submodule's package runs first anyway
                continue
            if state.get(target) == "open":
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n" + "\n".join(cycles)


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_sizes():
    wrong = []
    for module, path in sorted(MODULES.items()):
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES:
            wrong.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for fn in _functions(ast.parse(text)):
            length = fn.end_lineno - fn.lineno + 1
            args = fn.args
            params = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg not in ("self", "cls")]
            params += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
            if length > MAX_FUNCTION_LINES:
                wrong.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name}: {length} lines")
            if len(params) > MAX_PARAMETERS:
                wrong.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name}: {len(params)} parameters")
    assert not wrong, "\n" + "\n".join(wrong)


_MUTABLE_CALLS = {"dict", "list", "set", "defaultdict", "OrderedDict", "deque", "Counter", "bytearray"}


def test_no_module_level_mutable_state():
    """A module-level list / dict / set (a display, a comprehension or a constructor call) or a ``global``
    statement is state any caller can change: constants are tuples, frozensets or MappingProxyType."""
    wrong = []
    for module, path in sorted(MODULES.items()):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                value = node.value
                target = node.targets[0] if isinstance(node, ast.Assign) else node.target
                mutable = isinstance(value, (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp))
                mutable |= (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                            and value.func.id in _MUTABLE_CALLS)
                if mutable and getattr(target, "id", None) != "__all__":
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} {getattr(target, 'id', '?')}")
        wrong += [f"{path.relative_to(ROOT)}:{n.lineno} global {', '.join(n.names)}"
                  for n in ast.walk(tree) if isinstance(n, ast.Global)]
    assert not wrong, "\n" + "\n".join(wrong)


def _layout_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Layout\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "README.md has no '## Layout' section"
    return match.group(1)


def test_readme_layout_names_every_module():
    """Every module of pipeline/, train/, tools/ and benchmarks/ is named in the README's Layout section (by its
    path, or its file name in the row of its folder), and every ``*.py`` the section names exists."""
    layout = _layout_section()
    named = set(re.findall(r"[\w/]+\.py", layout))
    files = [p for p in list(MODULES.values()) + sorted((ROOT / "benchmarks").glob("*.py"))
             if p.name != "__init__.py"]
    missing = [str(p.relative_to(ROOT)) for p in files
               if str(p.relative_to(ROOT)) not in named and p.name not in named]
    assert not missing, "modules the README's Layout does not name:\n" + "\n".join(missing)
    existing = {str(p.relative_to(ROOT)) for p in files} | {p.name for p in files} | {p.name for p in MODULES.values()}
    gone = sorted(n for n in named if n not in existing and not (ROOT / n).is_file())
    assert not gone, "the README's Layout names files that do not exist:\n" + "\n".join(gone)


@pytest.mark.parametrize("folder", ["pipeline", "train", "tools", "tests", "benchmarks", "docs"])
def test_readme_layout_names_every_top_folder(folder):
    assert f"{folder}/" in _layout_section()


def test_every_package_folder_is_installed():
    """pyproject.toml lists its packages by name: a package folder missing there is missing from every wheel (the
    stack matrix and FlagPerf's images install one), though an editable install would not show it."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    listed = set(re.findall(r'"([\w.]+)"', re.search(r"^packages = \[(.*?)\]", text, re.S | re.M).group(1)))
    folders = {".".join(p.parent.relative_to(ROOT).parts) for package in PACKAGES
               for p in (ROOT / package).rglob("__init__.py")}
    assert sorted(folders - listed) == []
