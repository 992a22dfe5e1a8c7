"""f2d/ is the method library: importing it must not pull in ComfyUI, and its modules form layers
(no import cycle, lazy imports inside functions included)."""
import ast
import subprocess
import sys

from f2d_testkit import REPO

LIBRARY = REPO / "f2d"


def _modules() -> dict[str, object]:
    out = {}
    for path in sorted(LIBRARY.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the f2d modules it imports anywhere in its body (module level or inside functions)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                names = [stem] + [f"{stem}.{a.name}" for a in node.names]
            else:
                continue
            for n in names:
                while n and n not in modules:
                    n = n.rpartition(".")[0]
                if n and n != name and n != "f2d":  # the package itself only re-exports
                    targets.add(n)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = "done"
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_f2d_has_no_import_cycle():
    graph = import_graph()
    assert "f2d.cli" in graph and "f2d.train.trainer" in graph and "f2d.files" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    # The lowest layer imports nothing from f2d; the CLI is a top: nothing in the library imports it.
    assert graph["f2d.files"] == set()
    assert not [m for m, targets in graph.items() if "f2d.cli" in targets and m != "f2d.__main__"]


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_test_scaffolding_is_not_in_the_library():
    assert not (LIBRARY / "formula.py").exists()
    assert not [p for p in LIBRARY.rglob("*.py") if "formula" in p.read_text()]


def test_f2d_imports_no_comfyui_module():
    code = (
        "import sys, f2d, f2d.msid, f2d.mapping, f2d.align, f2d.weights, f2d.identity, f2d.cli, f2d.detect, "
        "f2d.tokens, f2d.likeness, f2d.identity_file, f2d.generate, f2d.files, f2d.precision, f2d.train.loss, "
        "f2d.train.data, f2d.train.trainer\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'comfy', 'comfy_api', 'comfy_extras', 'folder_paths', 'server', 'nodes', 'execution'})\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO / "tests", capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
