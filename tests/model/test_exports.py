"""`model`'s one export list: every name resolves, and `import model` stays light."""

import subprocess
import sys

import model


def test_every_exported_name_resolves():
    for name in model.__all__:
        assert getattr(model, name) is not None, name
    assert set(model.__all__) <= set(dir(model))


def test_importing_the_package_does_not_import_jax():
    code = "import sys, model; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
