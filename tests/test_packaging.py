"""The installed package is the source tree: every folder of ``pcmci/`` with an ``__init__.py`` is listed in
``pyproject.toml`` (setuptools installs only the listed ones; an editable install hides a missing one, a wheel
then lacks it — ``pcmci.experiments`` once did, so ``pcmci demo`` failed on import from a wheel)."""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_source_package_is_installed() -> None:
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "pcmci").rglob("__init__.py")}
    mapped = {name: folder for name, folder in setup["package-dir"].items()}
    assert mapped == {"pcmci.kernels": "kernels"} and (ROOT / "kernels" / "__init__.py").is_file()
    assert listed == found | set(mapped), f"pyproject.toml packages: missing {sorted(found - listed)}"
