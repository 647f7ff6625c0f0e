"""pyproject.toml and environment.yml must list the same packages with the same bounds."""
import re
import tomllib

import yaml

from nbutils.config import ROOT

CONDA_ONLY = {"python", "pip"}


def normalise(spec: str) -> tuple[str, str]:
    spec = spec.split("#")[0].strip()
    name, bound = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", spec).groups()
    return name.lower().replace("_", "-"), bound.replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(normalise(s) for s in project["dependencies"] + project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    specs = [d for d in env["dependencies"] if isinstance(d, str)]
    specs += [d for d in next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
              if not d.startswith("-e")]
    listed = dict(normalise(s) for s in specs)
    for name in CONDA_ONLY:
        listed.pop(name, None)
    assert listed == wanted


def test_torch_is_pinned_everywhere():
    assert '"torch==2.13.0"' in (ROOT / "pyproject.toml").read_text()
    assert "torch==2.13.0" in (ROOT / "environment.yml").read_text()
    assert 'torch==2.13.0' in (ROOT / "Makefile").read_text()


def test_scikit_image_is_pinned_to_the_installed_minor_version():
    """The yardstick's numbers (SSIM, histogram-matching baselines) move between scikit-image
    minor versions: the pin must name one minor version, and it must be the one installed."""
    import skimage

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bound = dict(normalise(s) for s in project["dependencies"])["scikit-image"]
    assert re.fullmatch(r"~=\d+\.\d+\.\d+", bound), bound
    assert skimage.__version__.startswith(bound[2:].rsplit(".", 1)[0] + ".")
