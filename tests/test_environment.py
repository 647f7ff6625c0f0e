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


def test_constraints_pin_every_dependency_inside_its_range():
    """constraints.txt (what make installs with) names one version of every package pyproject.toml
    asks for, torch as the CPU wheel's plain 2.13.0, and each inside pyproject's own range."""
    from packaging.specifiers import SpecifierSet

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = normalise(line)
            assert version.startswith("==") and "+" not in version, line
            assert name not in pins, f"{name} pinned twice"
            pins[name] = version[2:]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(normalise(s) for s in project["dependencies"] + project["optional-dependencies"]["dev"])
    assert set(wanted) <= set(pins), set(wanted) - set(pins)
    for name, bound in wanted.items():
        assert SpecifierSet(bound).contains(pins[name], prereleases=True), (name, pins[name], bound)
    assert pins["torch"] == "2.13.0"
    assert "pip" in pins  # make upgrades pip with these pins too (pip freeze leaves it out: add it)
    assert '-c "$$pins"' in (ROOT / "Makefile").read_text()  # and make installs with them
    # and builds this package with the pinned setuptools, inside pyproject's build requirement
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert all(SpecifierSet(normalise(r)[1]).contains(pins[normalise(r)[0]]) for r in build), build
    assert '--build-constraint "$$pins"' in (ROOT / "Makefile").read_text()
