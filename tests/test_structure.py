"""The package's shape stays as designed: modules and functions of a readable size, no import cycles, the
layering of pyproject.toml's import-linter contracts, every family with every role, and family names
compared in the registry alone."""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from lllite import families
from lllite.controls import ControlledNetwork

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lllite"
SOURCES = sorted([*PACKAGE.rglob("*.py"), *(ROOT / "data_tools").rglob("*.py")])
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100
MAX_NOTEBOOK_MODULE_LINES = 450  # lllite/notebook.py: display code only

#: Shared modules that may import a family's package directly, and why; everything else asks the registry.
IMPORTS_FAMILIES = {
    "lllite/__init__.py": "the package's face: the public names lllite.LLLiteNetwork and lllite.LLLiteModule",
    "lllite/architecture.py": "notebook 02's measurements put SDXL's LLLite and Anima's side by side",
}


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("path", SOURCES, ids=relative)
def test_no_module_is_over_600_lines_and_no_function_over_100(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{relative(path)} has {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{relative(path)}:{node.lineno} {node.name} has {length} lines"


def test_the_notebooks_display_module_stays_small():
    lines = len((PACKAGE / "notebook.py").read_text().splitlines())
    assert lines < MAX_NOTEBOOK_MODULE_LINES, f"lllite/notebook.py has {lines} lines"


def test_no_import_cycles():
    import grimp

    graph = grimp.build_graph("lllite")
    modules = sorted(graph.modules)
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in modules:
        if module not in index:
            visit(module)
    assert not cycles, f"modules that import each other: {cycles}"


def test_the_import_linter_contracts_hold():
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0, (
        "run `lint-imports` to see which import breaks a contract")


@pytest.mark.parametrize("family", families.FAMILIES, ids=lambda family: family.name)
def test_every_family_has_every_role_and_what_the_rest_of_lllite_reads_of_it(family):
    for role in families.ROLES:
        assert (PACKAGE / family.name / f"{role}.py").is_file(), f"lllite/{family.name}/{role}.py is missing"
        module = family.role(role)
        missing = [name for name in families.PROVIDES.get(role, ()) if not hasattr(module, name)]
        assert not missing, f"{family.package}.{role} lacks {missing}"
    network = importlib.import_module(f"{family.package}.network")
    own = [obj for obj in vars(network).values()
           if isinstance(obj, type) and issubclass(obj, ControlledNetwork) and obj.__module__ == network.__name__]
    assert [cls.family for cls in own] == [family.name]


def _family_words() -> set[str]:
    return {*families.names(), *families.model_choices()}


def _compared_strings(node: ast.Compare) -> list[str]:
    found = []
    for operand in [node.left, *node.comparators]:
        values = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
        found += [v.value for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return found


def _shared_modules() -> list[Path]:
    family_dirs = {PACKAGE / family.name for family in families.FAMILIES}
    return [path for path in PACKAGE.rglob("*.py")
            if path.name != "families.py" and not any(d in path.parents for d in family_dirs)]


@pytest.mark.parametrize("path", _shared_modules(), ids=relative)
def test_shared_code_compares_no_family_names_and_imports_no_family_unless_it_says_why(path):
    tree = ast.parse(path.read_text())
    words = _family_words()
    compared = [(node.lineno, text) for node in ast.walk(tree) if isinstance(node, ast.Compare)
                for text in _compared_strings(node) if text in words]
    assert not compared, f"{relative(path)} compares family names {compared}: ask lllite.families instead"
    packages = {family.package for family in families.FAMILIES}
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the module's package
                parts = list(path.relative_to(ROOT).with_suffix("").parts)[:-node.level]
                base = ".".join(parts + ([node.module] if node.module else []))
                if not node.module:
                    imported |= {f"{base}.{alias.name}" for alias in node.names}
            imported.add(base)
        elif isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
    families_imported = sorted({m for m in imported for p in packages if m == p or m.startswith(p + ".")})
    if relative(path) not in IMPORTS_FAMILIES:
        assert not families_imported, f"{relative(path)} imports {families_imported}: ask lllite.families instead"


def test_the_readmes_paragraph_on_adding_a_family_names_every_role_and_the_registry():
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"### Adding a model family\n\n(.*?)(?:\n\n#|\n*\Z)", readme, flags=re.S)
    assert match, "README.md has a section '### Adding a model family'"
    paragraph = match.group(1)
    assert "lllite/families.py" in paragraph and "FAMILIES" in paragraph
    missing = [role for role in families.ROLES if f"`{role}`" not in paragraph]
    assert not missing, f"the README's paragraph does not name the roles {missing}"
    assert all(f"lllite/{family.name}/" in readme for family in families.FAMILIES)


def _floors_of(requirements) -> dict[str, str]:
    floors = {}
    for requirement in requirements:
        name, _, version = requirement.strip().partition(">=")
        if version:
            floors[name.strip().lower()] = version.strip()
    return floors


def test_the_declared_floors_are_the_pinned_ones_ci_tests_and_environment_yml_says_the_same():
    import tomllib

    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _floors_of([*project["dependencies"], *project["optional-dependencies"]["dev"]])
    pinned = dict(line.split("==") for line in (ROOT / ".ci" / "floors.txt").read_text().splitlines()
                  if line and not line.startswith("#"))
    assert set(pinned) == set(declared), "pin every declared floor in .ci/floors.txt, and nothing else"
    for name, floor in declared.items():  # the pin is the floor's first release: 4.8 -> 4.8.0.76
        release = Version(pinned[name]).release
        assert release[: len(Version(floor).release)] == Version(floor).release, (name, floor, pinned[name])
    conda_names = {"pytorch": "torch", "py-opencv": "opencv-python-headless"}
    lines = [line.strip()[2:] for line in (ROOT / "environment.yml").read_text().splitlines()
             if line.strip().startswith("- ") and ">=" in line]
    conda = {conda_names.get(name, name): floor for name, floor in _floors_of(lines).items()}
    assert {name: conda[name] for name in declared} == declared
