"""The shape every module keeps (README, "One job per module"): no module in export/ or bench/
over 400 lines, no function over 60 lines or 8 parameters (a parameter dataclass instead), click
commands excepted: their options are their parameters."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("export", "bench")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 8


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def _is_click_command(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Decorated with ``@<group>.command(...)``, ``@click.command(...)`` or ``...group(...)``."""
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Attribute) and target.attr in ("command", "group"):
            return True
    return False


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = node.args
    named = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    return sum(a.arg not in ("self", "cls") for a in named)


def violations() -> dict[str, str]:
    """``path`` (a module) or ``path:function`` -> what is over the limits."""
    found = {}
    for path in _modules():
        name = path.relative_to(REPO).as_posix()
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            found[name] = f"{lines} lines"
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if _is_click_command(node):
                continue
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            over = [f"{length} lines"] if length > MAX_FUNCTION_LINES else []
            over += [f"{_parameters(node)} parameters"] if _parameters(node) > MAX_PARAMETERS \
                else []
            if over:
                found[f"{name}:{node.name}"] = ", ".join(over)
    return found


def test_modules_and_functions_keep_their_size():
    over = sorted(f"{k}: {v}" for k, v in violations().items())
    assert not over, "over the limits:\n" + "\n".join(over)


def test_the_checks_see_what_they_are_about():
    source = ("import click\n@click.command()\n" + "def cmd(a, b, c, d, e, f, g, h, i):\n"
              + "    pass\n" * 70 + "def long(a, b, c, d, e, f, g, h, i):\n" + "    pass\n" * 70)
    nodes = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)]
    assert [_is_click_command(n) for n in nodes] == [True, False]
    assert _parameters(nodes[1]) == 9
