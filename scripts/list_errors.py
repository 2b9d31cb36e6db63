"""Regenerate the error catalogue of docs/troubleshooting.md from the source.

Finds every ``ConfigError(...)``, ``check(cond, msg)`` and ``choices_error(what, ...)`` in
the package and prints its message template (formatted values shown as ``{...}``) with the
file and line, so the catalogue lists every config/data error a user can meet.
Usage: python scripts/list_errors.py > /tmp/catalogue.md
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def template(node: ast.AST) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(template(v) if isinstance(v, ast.Constant) else "{…}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return template(node.left) + template(node.right)
    return "{…}"


def messages(path: Path) -> list[tuple[int, str, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name = getattr(node.func, "id", getattr(node.func, "attr", ""))
        if name == "ConfigError":
            found.append((node.lineno, "error", template(node.args[0])))
        elif name == "check" and len(node.args) >= 2:
            found.append((node.lineno, "check", template(node.args[1])))
        elif name == "choices_error":
            found.append(
                (
                    node.lineno,
                    "unknown name",
                    f"unknown {template(node.args[0])} …; valid choices: …",
                )
            )
    return sorted(found)


def main() -> None:
    out = sys.stdout
    for path in sorted((ROOT / "attnexp").rglob("*.py")):
        rows = messages(path)
        if not rows:
            continue
        out.write(f"\n### `{path.relative_to(ROOT)}`\n\n")
        for line, kind, text in rows:
            text = " ".join(text.split()).replace("|", "\\|")
            out.write(f"- L{line} ({kind}): {text}\n")


if __name__ == "__main__":
    main()
