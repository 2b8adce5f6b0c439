"""Faust's data directory goes under KAFKA_DAGSTER_DATA_DIR (default: a folder under the temporary directory),
never the working directory, which is the checkout when the tests run workers."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from service.app import create_app
from service.errors import ConfigurationError
from service.settings import load_settings


def test_the_default_is_under_the_temporary_directory() -> None:
    data_dir = load_settings({}).data_dir

    assert data_dir.parent == Path(tempfile.gettempdir())
    assert data_dir.name.startswith("kafka-dagster-")


def test_the_worker_app_keeps_its_data_under_the_setting(tmp_path: Path) -> None:
    settings = load_settings({"KAFKA_DAGSTER_DATA_DIR": str(tmp_path / "state"),
                              "KAFKA_DAGSTER_GROUP_ID": "orders-{1}"})

    app = create_app(settings)

    assert (tmp_path / "state").is_dir(), "created, so that Faust can create its own folder in it"
    assert app.conf.datadir == tmp_path / "state" / "orders-{1}-data"


def test_a_file_is_not_a_data_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")

    with pytest.raises(ConfigurationError, match="KAFKA_DAGSTER_DATA_DIR"):
        load_settings({"KAFKA_DAGSTER_DATA_DIR": str(tmp_path / "file")})


def test_a_data_directory_that_cannot_be_created_fails_naming_the_setting(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    settings = load_settings({"KAFKA_DAGSTER_DATA_DIR": str(tmp_path / "file" / "below")})

    with pytest.raises(ConfigurationError, match=r"invalid setting KAFKA_DAGSTER_DATA_DIR=.*cannot create it"):
        create_app(settings)
