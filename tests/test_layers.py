"""The package layers: ``runtime`` <- ``infini_export`` <- ``exporters`` <- ``tasks`` <- ``training`` <- ``infini_cli``
<- ``benchmarks``, each importing only the ones before it (imports inside functions count); scripts are thin and nothing
edits ``sys.path``."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["runtime", "infini_export", "exporters", "tasks", "training", "infini_cli", "benchmarks"]  # each may import the ones before it
MAX_MODULE_LINES = 500
MAX_SCRIPT_LINES = 300


def _python_files(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py") if "node_modules" not in p.parts)


def _imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every absolute import in the file, at any depth."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {(a.name.split(".")[0], node.lineno) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add((node.module.split(".")[0], node.lineno))
    return out


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_the_layers_below_it(layer):
    allowed = set(LAYERS[:LAYERS.index(layer) + 1])
    wrong = [f"{p.relative_to(ROOT)}:{line} imports {pkg}"
             for p in _python_files(layer) for pkg, line in _imported_packages(p)
             if pkg in LAYERS and pkg not in allowed]
    assert not wrong, f"{layer} may import only {sorted(allowed)}:\n" + "\n".join(wrong)


def test_the_layer_checker_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from exporters.onnx import export_onnx\n    import infini_cli.main\n")
    assert _imported_packages(f) == {("exporters", 2), ("infini_cli", 3)}


def _edits_import_path(tree: ast.AST) -> bool:
    """A call of a method on ``sys.path`` (insert, append, ...) or an assignment into it."""
    def is_path(node):
        return isinstance(node, ast.Attribute) and node.attr == "path" and \
            isinstance(node.value, ast.Name) and node.value.id == "sys"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and is_path(node.func.value):
            return True
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(is_path(t) or (isinstance(t, ast.Subscript) and is_path(t.value)) for t in targets):
                return True
    return False


def test_nothing_edits_sys_path():
    """The packages are installed (``pip install -e .``): no script, test or tool reaches around that."""
    edits = [str(p.relative_to(ROOT)) for p in _python_files(*LAYERS, "scripts", "tests", "web/tools")
             if _edits_import_path(ast.parse(p.read_text()))]
    assert not edits, f"these edit the import path: {edits}"


def test_the_path_checker_sees_edits(tmp_path):
    assert _edits_import_path(ast.parse("import sys\nsys.path.extend(['x'])"))
    assert _edits_import_path(ast.parse("import sys\nsys.path[:0] = ['x']"))
    assert not _edits_import_path(ast.parse("import sys\nprint(sys.path)"))


def test_no_test_imports_a_script():
    """Tests import packages: no ``scripts`` import, and no loading of files by path (``importlib.util``)."""
    hits = [f"{p.name}:{line} imports {pkg}" for p in _python_files("tests")
            for pkg, line in _imported_packages(p) if pkg == "scripts"]
    hits += [f"{p.name}:{node.lineno} loads modules from files" for p in _python_files("tests")
             for node in ast.walk(ast.parse(p.read_text()))
             if isinstance(node, (ast.Import, ast.ImportFrom))
             and "importlib.util" in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module])]
    assert not hits, hits


def test_modules_and_scripts_stay_small():
    big = [f"{p.relative_to(ROOT)}: {n} lines" for p in _python_files(*LAYERS, "tests")
           if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    big += [f"{p.relative_to(ROOT)}: {n} lines" for p in _python_files("scripts")
            if (n := len(p.read_text().splitlines())) > MAX_SCRIPT_LINES]
    assert not big, "\n".join(big)


def test_the_manifest_builder_runs_without_torch():
    """One builder for every manifest, importable where torch is not (a device-side tool can write one)."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['torch'] = None\n"
            "from infini_export.manifest import manifest_document, io_entries\nprint('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
