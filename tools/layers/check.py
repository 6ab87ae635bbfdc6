"""Checks the layering of every crate's src/ (docs/ARCHITECTURE.md).

- No import loop between the files of one crate: a file's imports are its
  `crate::x` paths (in `use` lines and in code); a loop is reported with
  the files in it. docs/ARCHITECTURE.md names the loops allowed (none
  today), in ALLOWED below.
- No source file over 500 lines, tests excepted (a `#[cfg(test)] mod
  tests` at the end of a file does not count, nor does the tests crate,
  which is test support).

Exits 1 with what is wrong, 0 when all holds.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRATES = ["protocol", "certs", "server", "client", "bench", "extension", "tests"]
MAX_LINES = 500
# Loops that are one unit, by crate: frozensets of module names.
ALLOWED: dict[str, list[frozenset[str]]] = {}

CRATE_PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
USE_GROUP = re.compile(r"\buse crate::\{([^;]*)\};", re.S)


def module_of(src: pathlib.Path, path: pathlib.Path) -> str:
    rel = path.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return parts[0] if parts else "crate"


def imports(text: str) -> set[str]:
    code = "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("//")
    )
    found = set(CRATE_PATH.findall(code))
    for group in USE_GROUP.findall(code):
        for item in group.split(","):
            name = item.strip().split("::")[0].strip()
            if re.fullmatch(r"[a-z_][a-z0-9_]*", name):
                found.add(name)
    return found


TESTS_MOD = re.compile(r"#\[cfg\(test\)\]\s*(#\[[^\]]*\]\s*)*(pub\(crate\)\s+)?mod tests\b")


def without_tests(text: str) -> str:
    found = TESTS_MOD.search(text)
    return text if found is None else text[: found.start()]


def loops(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    problems = []
    for crate in CRATES:
        src = ROOT / crate / "src"
        if not src.is_dir():
            continue
        # Each binary under src/bin is a crate of its own.
        roots = [("lib", src, [p for p in src.rglob("*.rs") if "bin" not in p.relative_to(src).parts])]
        bin_dir = src / "bin"
        if bin_dir.is_dir():
            for b in sorted(bin_dir.iterdir()):
                files = list(b.rglob("*.rs")) if b.is_dir() else [b]
                roots.append((b.stem, b if b.is_dir() else bin_dir, files))
        for name, base, files in roots:
            graph: dict[str, set[str]] = {}
            for path in files:
                text = path.read_text()
                lines = without_tests(text).count("\n")
                if lines > MAX_LINES and crate != "tests":
                    problems.append(
                        f"{path.relative_to(ROOT)}: {lines} lines outside tests (limit {MAX_LINES})"
                    )
                module = module_of(base, path)
                deps = imports(without_tests(text)) - {module}
                graph.setdefault(module, set()).update(deps)
            for comp in loops(graph):
                if frozenset(comp) in ALLOWED.get(crate, []):
                    continue
                problems.append(
                    f"{crate} ({name}): import loop between {', '.join(sorted(comp))}"
                )
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
