"""The package's layers: who may import whom, no import cycles, and Beam loaded only by what needs it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tdmq_beam"

# Layer -> the layers (and foreign packages) it must not import at module level.
FORBIDDEN = {
    "tdmq_beam.mqtt": (
        "tdmq_beam.rules", "tdmq_beam.service", "tdmq_beam.records", "tdmq_beam.transforms", "tdmq_beam.emulator",
    ),
    "tdmq_beam.rules": ("tdmq_beam.service", "tdmq_beam.records", "tdmq_beam.transforms", "tdmq_beam.emulator"),
    "tdmq_beam.service": ("tdmq_beam.records", "tdmq_beam.transforms", "tdmq_beam.emulator", "apache_beam"),
    "tdmq_beam.records": ("tdmq_beam.transforms", "tdmq_beam.emulator"),
    # The service's rules are in tdmq_beam.rules: the emulator needs nothing of the client.
    "tdmq_beam.emulator": ("tdmq_beam.transforms", "tdmq_beam.records", "tdmq_beam.service", "apache_beam"),
}  # fmt: skip


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, *, type_checking: bool = False) -> set[str]:
    """Modules imported when the module loads (not inside functions; ``if TYPE_CHECKING:``
    blocks only with ``type_checking``, as a type checker reads them)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If) and (type_checking or "TYPE_CHECKING" not in ast.unparse(node.test)):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(tree.body)
    return found


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
# Who imports whom, TYPE_CHECKING imports included: a cycle there is a cycle for the type checker
# and for the reader, even if Python never runs it.
GRAPH = {
    name: {target for target in _top_level_imports(path, type_checking=True) if target in MODULES and target != name}
    for name, path in MODULES.items()
}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_what_is_below_them(layer):
    wrong = []
    for name, path in MODULES.items():
        if name == layer or name.startswith(layer + "."):
            for target in _top_level_imports(path):
                if any(target == bad or target.startswith(bad + ".") for bad in FORBIDDEN[layer]):
                    wrong.append(f"{name} imports {target}")
    assert wrong == []


def test_no_import_cycles():
    state: dict[str, int] = {}
    cycles = []

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target, [*stack, target])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_emulator_and_the_client_do_not_load_beam():
    code = (
        "import sys\n"
        "import tdmq_beam.emulator.cli, tdmq_beam.testing\n"
        "from tdmq_beam import AsyncTdmqClient, MqttMessage, Secret, TdmqClient, TdmqConnection\n"
        "assert 'apache_beam' not in sys.modules, 'apache_beam was imported'\n"
        "from tdmq_beam import WriteToTdmqMqtt\n"
        "assert 'apache_beam' in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_public_names_resolve_and_list():
    import tdmq_beam

    for name in tdmq_beam.__all__:
        assert getattr(tdmq_beam, name).__name__ == name
    assert set(tdmq_beam.__all__) <= set(dir(tdmq_beam))
    with pytest.raises(AttributeError):
        tdmq_beam.NoSuchThing  # noqa: B018
