"""Build hook: ship the repository's ``models/`` folder inside the package (``hmrcli/models``).

All metadata is in pyproject.toml. The shipped model assets (free body model, registry, mean
parameters, MoveNet, the pose prior, with their licence files) live at the top of the
repository, where a source checkout and ``pip install -e .`` find them; a wheel or a
non-editable ``pip install .`` gets a copy in ``hmrcli/models/`` (found by
:func:`hmrcli.assets.models_dir`). setuptools' package-data cannot name files outside the
package, hence this small hook.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithModels(build_py):
    def run(self):
        super().run()
        src = ROOT / "models"
        if not src.is_dir():  # building from an sdist that already carries hmrcli/models
            return
        dest = Path(self.build_lib) / "hmrcli" / "models"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.tmp", ".*"))


setup(cmdclass={"build_py": BuildWithModels})
