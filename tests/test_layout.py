"""The package's layout holds: rooms import only downwards (basics < models < interop < parity,
train < export, explain < study), no import cycle, no private name used across modules."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "mlx_models"
# room -> floor; a room imports only rooms on lower floors, and itself. "" = the shared basics
# at the package's top (errors, io, cli, hub, registry, batching) and the CPU kernels.
FLOORS = {"": 0, "kernels": 0, "models": 1, "interop": 2, "parity": 3, "train": 3}
FLOORS |= {"export": 4, "explain": 4, "study": 5, "__main__": 6}  # __main__: also commands.py


def modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = f.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts).removesuffix(".__init__")] = f
    return out


def room(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return "__main__"  # the package's face (load, convert) hands on names from every room
    if parts[0] in ("__main__", "commands"):  # the command line: the top floor
        return "__main__"
    return parts[0] if (PKG / parts[0]).is_dir() else ""


def imports(module: str, path: Path, known: set[str]) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import of the package, at any depth."""
    is_pkg = path.name == "__init__.py"
    here = module.split(".") if is_pkg else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if not target.startswith("mlx_models"):
                continue
            names = []
            for a in node.names:
                if f"{target}.{a.name}" in known:
                    found.append((f"{target}.{a.name}", [], node.lineno))
                else:
                    names.append(a.name)
            if names:
                found.append((target, names, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("mlx_models")]
    return found


def graph() -> dict[str, list[tuple[str, list[str], int]]]:
    mods = modules()
    return {m: [i for i in imports(m, p, set(mods)) if i[0] in mods] for m, p in mods.items()}


def test_rooms_import_only_downwards():
    wrong = []
    for module, deps in graph().items():
        mine = room(module)
        for target, _, line in deps:
            theirs = room(target)
            if theirs != mine and FLOORS[theirs] >= FLOORS[mine] and theirs not in ("", "kernels"):
                wrong.append(f"{module}:{line} imports {target} ({theirs or 'basics'} is not below {mine})")
            if mine in ("", "kernels") and theirs not in ("", "kernels") and module != "mlx_models":
                wrong.append(f"{module}:{line} (basics) imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    deps = {m: {t for t, _, _ in d if t != m} for m, d in graph().items()}
    deps = {
        m: {t for t in d if not m.startswith(t + ".")} for m, d in deps.items()
    }  # a package's own parents
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = 1
        for t in sorted(deps[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join([*stack[stack.index(t) :], t]))
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = 2

    for m in sorted(deps):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_no_private_name_across_modules():
    mods = modules()
    wrong = []
    for module, deps in graph().items():
        for target, names, line in deps:
            if target != module:  # a package's own compiled extension (kernels._cpu_kernels) is its own
                wrong += [f"{module}:{line} takes {n} from {target}" for n in names if n.startswith("_")]
        tree = ast.parse(mods[module].read_text())
        taken = [a for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
        aliases = {a.asname or a.name for a in taken if any(t.endswith("." + a.name) for t, _, _ in deps)}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                wrong.append(f"{module}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module", sorted(modules()))
def test_every_module_says_what_it_is_for(module):
    doc = ast.get_docstring(ast.parse(modules()[module].read_text()))
    assert doc, f"{module} has no docstring"


def test_family_knowledge_stays_in_its_file():
    """Outside models/, no code names a model_type: it asks the family (``models.family``), so a
    new family is one new file."""
    from mlx_models.models import MODULES

    wrong = []
    for module, path in modules().items():
        if room(module) == "models":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in MODULES:
                wrong.append(f"{module}:{node.lineno} names the {node.value!r} family")
    assert not wrong, "\n".join(wrong)
