"""The reference-data loader: every file format, and clear errors for bad data."""

from __future__ import annotations

import pytest

from tests.conftest import write_reference
from tests.guide_samples import reference_tables
from transforms.reference import ReferenceDataError, load_reference_data


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "parquet"])
def test_every_format_loads_the_same_snapshot(tmp_path, fmt, sample_reference):
    loaded = load_reference_data(str(write_reference(tmp_path / fmt, reference_tables(), fmt)))
    assert loaded == sample_reference
    assert loaded.sizes()["imsi"] == 4
    assert loaded.tables["sim"][274887]["production_date"] == "2019-06-17T11:11:11.000+0000"
    # +02:00 in the file, UTC in documents
    assert loaded.tables["sim"][319318]["production_date"] == "2019-06-17T11:11:11.000+0000"
    assert loaded.tables["sim"][274887]["msisdn"] is None
    assert loaded.tapcodes_by_operator[3] == ({"id": 2, "tapcode": "DEUD2"},)
    assert loaded.imsi_by_value["262019900000172"]["sim_id"] == 319318


def test_formats_can_be_mixed(tmp_path, sample_reference):
    tables = reference_tables()
    directory = tmp_path / "mixed"
    write_reference(directory, {k: v for k, v in tables.items() if k < "m"}, "csv")
    write_reference(directory, {k: v for k, v in tables.items() if k >= "m"}, "parquet")
    assert load_reference_data(str(directory)) == sample_reference


def _error(tmp_path, tables, fmt="json"):
    with pytest.raises(ReferenceDataError) as caught:
        load_reference_data(str(write_reference(tmp_path / "ref", tables, fmt)))
    return str(caught.value)


def test_missing_table(tmp_path):
    tables = reference_tables()
    del tables["currency"]
    assert "reference table 'currency' is missing" in _error(tmp_path, tables)


def test_two_files_for_one_table(tmp_path):
    directory = write_reference(tmp_path / "ref", reference_tables(), "json")
    write_reference(directory, {"sim": reference_tables()["sim"]}, "csv")
    with pytest.raises(ReferenceDataError, match="'sim' has several files"):
        load_reference_data(str(directory))


def test_duplicate_id_names_file_and_row(tmp_path):
    tables = reference_tables()
    tables["sim"].append(dict(tables["sim"][0]))
    message = _error(tmp_path, tables, "csv")
    assert "sim.csv line 5" in message and "duplicate sim id 274887" in message


def test_bad_cell_names_file_row_and_field(tmp_path):
    tables = reference_tables()
    tables["operator"][1]["country_id"] = "Germany"
    message = _error(tmp_path, tables, "csv")
    assert "operator.csv line 3" in message and "country_id" in message


def test_missing_required_value(tmp_path):
    tables = reference_tables()
    tables["organisation"][0]["name"] = None
    message = _error(tmp_path, tables, "json")
    assert "organisation.json item 1" in message and "name" in message


def test_dangling_foreign_key(tmp_path):
    tables = reference_tables()
    tables["imsi"][0]["sim_id"] = 42
    assert "imsi 205672: sim_id 42 is not a known sim" in _error(tmp_path, tables, "parquet")


def test_imsi_provisioned_twice(tmp_path):
    tables = reference_tables()
    tables["imsi"][1]["imsi"] = tables["imsi"][0]["imsi"]
    assert "provisioned twice" in _error(tmp_path, tables)


def test_bad_entity_date(tmp_path):
    tables = reference_tables()
    tables["sim"][0]["production_date"] = "2019-06-17"
    assert "sim 274887: production_date" in _error(tmp_path, tables)


def test_unknown_enum_symbol(tmp_path):
    tables = reference_tables()
    tables["traffic_type"][0]["unit"] = "kilobytes"
    assert "unit must be one of bytes, messages" in _error(tmp_path, tables)
