"""The layers of docs/README.md ("The layout") hold: every import points down, read from the
source of every module, and a frontend worker process loads neither JAX nor the engine."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# server/: its rooms (a package or a top-level module), by layer from the ground up. A module
# may import its own layer and the layers below it.
LAYERS = (
    ("ground", ("config", "errors", "cores", "rpc")),
    ("operations", ("operations",)),
    ("scheduling", ("scheduling",)),
    ("engine", ("engine",)),
    ("contracts", ("contracts",)),
    ("door", ("door",)),
    ("versions and compilation", ("publication", "compilation")),
    ("assembly", ("app", "flags", "client")),
    ("command line", ("cli",)),
)
LAYER_OF = {room: i for i, (_, rooms) in enumerate(LAYERS) for room in rooms}
# Side by side: neither of these imports the other.
APART = {("engine", "contracts"), ("contracts", "engine")}


def _modules(package: str) -> list[tuple[str, Path]]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if "_pb2" in path.name:
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        out.append((".".join(p for p in parts if p != "__init__"), path))
    return out


def _imports(path: Path) -> set[str]:
    """Every module named by an import in `path` (absolute imports; the repo uses no others)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _room(module: str) -> str:
    """server.door.ipc -> "door"; server.app -> "app"."""
    return module.split(".")[1]


def test_every_server_room_has_a_layer():
    rooms = {_room(m) for m, _ in _modules("server") if m != "server"}
    assert rooms == set(LAYER_OF), rooms ^ set(LAYER_OF)


@pytest.mark.parametrize("module,path", _modules("server"), ids=lambda x: str(x))
def test_server_imports_point_down(module, path):
    if module == "server":
        return
    mine = _room(module)
    wrong = sorted(
        name
        for name in _imports(path)
        if name.startswith("server.")
        and _room(name) in LAYER_OF
        and (LAYER_OF[_room(name)] > LAYER_OF[mine] or (mine, _room(name)) in APART)
    )
    assert not wrong, f"{module} imports a layer above its own, or beside it: {wrong}"


@pytest.mark.parametrize("package,forbidden", [
    ("request", ("model", "server", "training")),
    ("model", ("server", "training")),
])  # fmt: skip
def test_request_and_model_point_one_way(package, forbidden):
    found = {
        module: sorted(n for n in _imports(path) if n.split(".")[0] in forbidden)
        for module, path in _modules(package)
    }
    assert not {m: n for m, n in found.items() if n}


def test_a_frontend_worker_process_loads_no_jax_and_no_engine():
    code = (
        "import sys, server.door.frontend_worker; "
        "print(sorted({m.split('.')[0] if m.startswith('jax') else m for m in sys.modules "
        "if m.startswith(('jax', 'haiku', 'server.engine', 'server.app'))}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert out.strip() == "[]", out
