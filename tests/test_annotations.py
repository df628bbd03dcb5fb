"""Every public function and method of the package has annotations on its parameters and its return."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPECIAL = {"__init__", "__call__", "__enter__", "__exit__", "__getattr__"}


def _public_modules():
    for base in ("infoplane", "cli"):
        for path in sorted((REPO / base).rglob("*.py")):
            parts = path.relative_to(REPO / base).parts
            if not any(p.startswith("_") and p != "__init__.py" for p in parts):
                yield path


def _missing(path, root=REPO):
    out = []

    def visit(node, prefix, public):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".", public and not child.name.startswith("_"))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if not public or (child.name.startswith("_") and child.name not in SPECIAL):
                    continue
                args = child.args.posonlyargs + child.args.args + child.args.kwonlyargs
                if prefix and args and args[0].arg in ("self", "cls"):
                    args = args[1:]
                bad = [a.arg for a in args if a.annotation is None]
                bad += [f"*{a.arg}" for a in (child.args.vararg, child.args.kwarg) if a and a.annotation is None]
                if child.returns is None and child.name != "__init__":
                    bad.append("return")
                if bad:
                    out.append(f"{path.relative_to(root)}:{child.lineno} {prefix}{child.name}: {', '.join(bad)}")

    visit(ast.parse(path.read_text()), "", True)
    return out


def test_every_public_function_is_annotated():
    missing = [m for path in _public_modules() for m in _missing(path)]
    assert not missing, "public functions without annotations:\n" + "\n".join(missing)


def test_the_check_sees_a_missing_annotation(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f(a, b: int) -> int:\n    return b\n"
                      "def _private(a):\n    pass\n"
                      "class C:\n    def m(self, x: int):\n        pass\n    def __init__(self, y):\n        pass\n"
                      "class _Hidden:\n    def m(self, x):\n        pass\n")
    assert _missing(module, root=tmp_path) == ["m.py:1 f: a", "m.py:6 C.m: return", "m.py:8 C.__init__: y"]
