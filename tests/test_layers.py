"""The shape of the code, checked from its source (ast, nothing imported): no import cycle between modules,
no import from a lower layer to a higher one (`coreseg` ← `annotation` ← `trainers` ← `studio` ← `app.py`),
and no source file over 600 lines. Imports inside functions count: a lazy import is still a dependency."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("coreseg", "annotation", "trainers", "studio", "app")   # each may import only from its left
MAX_LINES = 600
SOURCE_DIRS = ("coreseg", "annotation", "trainers", "studio", "bench", "scripts")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    """Dotted name → file of every module in the layered packages, and app.py."""
    files = [p for layer in LAYERS[:-1] for p in sorted((ROOT / layer).rglob("*.py"))] + [ROOT / "app.py"]
    return {_module_name(p): p for p in files if p.exists()}


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules a file imports (anywhere in it), resolved to the longest known module name."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            module = resolve(target)
            if module is not None and module != name:
                found.add(module)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The parser itself: an import inside a function and a relative import are both found."""
    fake = ROOT / "coreseg" / "__layers_probe__.py"
    modules = {"coreseg.answer": ROOT / "coreseg/answer.py", "trainers.grpo": ROOT / "trainers/grpo.py",
               "coreseg.__layers_probe__": fake, "coreseg": ROOT / "coreseg/__init__.py"}
    source = tmp_path / "probe.py"
    source.write_text("from . import answer\n\ndef f():\n    from trainers.grpo import main\n")
    found = _imports(source, "coreseg.__layers_probe__", modules)
    assert found == {"coreseg.answer", "trainers.grpo", "coreseg"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (move the shared piece down into its own module): " + "; ".join(
        " ↔ ".join(c) for c in cycles)


def test_no_import_from_a_lower_layer_to_a_higher_one():
    upward = sorted(f"{a} imports {b}" for a, deps in _graph().items() for b in deps if _layer(b) > _layer(a))
    assert not upward, f"layers are {' ← '.join(LAYERS)}; upward imports: " + "; ".join(upward)


def test_no_source_file_over_600_lines():
    files = [p for d in SOURCE_DIRS if (ROOT / d).exists() for p in (ROOT / d).rglob("*.py")] + [ROOT / "app.py"]
    long = sorted(f"{p.relative_to(ROOT)} ({n} lines)" for p in files
                  if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES)
    assert not long, f"files over {MAX_LINES} lines (split them by job): " + ", ".join(long)
