"""Static checkers behind tests/test_contracts.py: a stage script's import closure, and the params it reads.

Both read source with :mod:`ast`; nothing is imported or run. The params checker follows a params
group into the project functions it is passed to, so ``make_trainer(params.train, ...)`` counts as
reading exactly the ``train.*`` keys that ``make_trainer`` touches.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PROJECT_PACKAGES = ("flowerlab", "stages", "serve")
MAX_DEPTH = 6  # how deep a params group is followed through calls


# --------------------------------------------------------------------------- import closure

def module_file(module: str, root: Path) -> Path | None:
    """``a.b`` -> ``root/a/b.py`` or ``root/a/b/__init__.py``; None when it is not a project module."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):  # function-level (lazy) imports count too
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # may be submodules
    return {name for name in names if name.split(".")[0] in PROJECT_PACKAGES}


def _package_inits(module: str, root: Path) -> set[Path]:
    """Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first."""
    parts = module.split(".")
    return {root.joinpath(*parts[:i], "__init__.py") for i in range(1, len(parts))
            if root.joinpath(*parts[:i], "__init__.py").is_file()}


def _data_files(path: Path, tree: ast.AST) -> set[Path]:
    """Files next to a module that it names in a string constant (package data it opens)."""
    strings = {node.value for node in ast.walk(tree)
               if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return {file for file in path.parent.iterdir()
            if file.is_file() and file.suffix not in (".py", ".pyc") and file.name in strings}


def code_deps(entry: str, root: Path) -> set[str]:
    """Every project file that running ``python -m entry`` imports or opens, relative to ``root``."""
    found: set[Path] = set()
    pending = [entry]
    seen: set[str] = set()
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = module_file(module, root)
        if path is None:
            continue  # a name imported from a module, not a module itself
        tree = ast.parse(path.read_text(), str(path))
        found |= {path} | _package_inits(module, root) | _data_files(path, tree)
        pending += sorted(_imported_modules(tree))
    return {str(p.relative_to(root)) for p in found}


# --------------------------------------------------------------------------- params read

@cache
def param_keys() -> frozenset[str]:
    """Every dotted key of the typed params, groups (``train``) and leaves (``train.devices``)."""
    from omegaconf import OmegaConf

    from flowerlab.config import Params

    keys: set[str] = set()

    def walk(tree: dict, prefix: str) -> None:
        for key, value in tree.items():
            keys.add(prefix + key)
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")

    walk(OmegaConf.to_container(OmegaConf.structured(Params)), "")
    return frozenset(keys)


def _is_group(key: str) -> bool:
    return key == "" or any(k.startswith(key + ".") for k in param_keys())


def _chain(node: ast.AST) -> tuple[str, list[str]] | None:
    """``a.b.c`` -> ("a", ["b", "c"]); None for anything not rooted at a plain name."""
    attrs: list[str] = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    return (node.id, attrs[::-1]) if isinstance(node, ast.Name) else None


def _key(prefix: str, attrs: list[str]) -> str:
    """The longest params key that ``prefix.attrs...`` names (``.value`` of an enum is cut off)."""
    key = prefix
    for attr in attrs:
        longer = f"{key}.{attr}" if key else attr
        if longer not in param_keys():
            break
        key = longer
    return key


class _Module:
    """One parsed project module: its top-level functions and classes, and what it imports."""

    def __init__(self, path: Path, root: Path):
        self.path, self.root = path, root
        self.tree = ast.parse(path.read_text(), str(path))
        self.defs = {node.name: node for node in self.tree.body
                     if isinstance(node, ast.FunctionDef | ast.ClassDef)}
        self.imports: dict[str, str] = {}  # local name -> module it comes from
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = node.module

    def resolve(self, name: str) -> tuple[_Module, ast.FunctionDef, bool] | None:
        """The project function a called name runs (a class runs its ``__init__``), and whether
        its first parameter is ``self``."""
        module = self
        if name not in self.defs:
            source = self.imports.get(name)
            path = module_file(source, self.root) if source else None
            if path is None:
                return None
            module = _load(path, self.root)
        node = module.defs.get(name)
        if isinstance(node, ast.ClassDef):
            init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"),
                        None)
            return (module, init, True) if init else None
        return (module, node, False) if node else None


@cache
def _load(path: Path, root: Path) -> _Module:
    return _Module(path, root)


def _function_reads(module: _Module, function: ast.FunctionDef, bindings: dict[str, str],
                    depth: int) -> set[str]:
    """Params keys read in ``function``, where each name in ``bindings`` holds a params key."""
    bindings = dict(bindings)
    parents = {child: parent for parent in ast.walk(function) for child in ast.iter_child_nodes(parent)}
    aliases: set[ast.AST] = set()
    for node in ast.walk(function):  # `train = params.train`: a new name for a group
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            chain = _chain(node.value)
            if chain and chain[0] in bindings:
                key = _key(bindings[chain[0]], chain[1])
                if _is_group(key):
                    bindings[node.targets[0].id] = key
                    aliases.add(node.value)

    reads: set[str] = set()
    for node in ast.walk(function):
        if not isinstance(node, ast.Attribute | ast.Name) or node in aliases:
            continue
        if isinstance(parents.get(node), ast.Attribute):
            continue  # only the outermost attribute of a chain
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            continue
        chain = _chain(node)
        if not chain or chain[0] not in bindings:
            continue
        key = _key(bindings[chain[0]], chain[1])
        if _is_group(key):
            followed = _follow_call(module, parents.get(node), node, key, depth)
            reads |= followed if followed is not None else {key}
        else:
            reads.add(key)
    return reads


def _follow_call(module: _Module, call: ast.AST | None, argument: ast.AST, key: str,
                 depth: int) -> set[str] | None:
    """The keys read by the project function a group is passed to; None if it cannot be followed."""
    if depth >= MAX_DEPTH or not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        return None
    resolved = module.resolve(call.func.id)
    if resolved is None:
        return None
    callee_module, function, method = resolved
    names = [a.arg for a in function.args.posonlyargs + function.args.args][1 if method else 0:]
    if argument in call.args:
        position = call.args.index(argument)
        if position >= len(names):
            return None
        name = names[position]
    else:
        name = next(kw.arg for kw in call.keywords if kw.value is argument)
    return _function_reads(callee_module, function, {name: key}, depth + 1)


def param_reads(script: Path, root: Path) -> set[str]:
    """Params keys a stage script reads: from ``params = load_params(...)`` on, through its calls."""
    module = _load(script, root)
    reads: set[str] = set()
    for function in ast.walk(module.tree):
        if not isinstance(function, ast.FunctionDef):
            continue
        for node in function.body:
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                    and isinstance(node.value.func, ast.Name) and node.value.func.id == "load_params"):
                reads |= _function_reads(module, function, {node.targets[0].id: ""}, 0)
    return reads


def uncovered_and_unused(reads: set[str], declared: set[str]) -> tuple[set[str], set[str]]:
    """Reads no declared key covers, and declared keys nothing reads."""
    def covers(outer: str, inner: str) -> bool:
        return outer == inner or inner.startswith(outer + ".")

    uncovered = {r for r in reads if not any(covers(d, r) for d in declared)}
    unused = {d for d in declared if not any(covers(d, r) or covers(r, d) for r in reads)}
    return uncovered, unused
