"""Settings from KAIROS_* variables: parsing, validation, errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from kairos.config import ConfigError, Settings, load_settings

pytestmark = pytest.mark.timeout(60)


def test_defaults_without_environment() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.partitions == 16
    assert settings.shards == 2
    assert settings.port == 8080
    assert settings.redis_fsync == "always", "acknowledged events must survive power loss by default"


def test_environment_values_are_parsed_to_their_types() -> None:
    settings = load_settings({
        "KAIROS_PORT": "9001",
        "KAIROS_PARTITIONS": "32",
        "KAIROS_SHARDS": "4",
        "KAIROS_SNAPSHOT_INTERVAL_S": "2.5",
        "KAIROS_AUTH_CACHE_S": "0",
        "KAIROS_HOST": "0.0.0.0",
        "KAIROS_REDIS_URL": "redis://cache:6379/2",
        "KAIROS_REDIS_FSYNC": "always",
        "KAIROS_DATA_DIR": "/tmp/kairos-data",
        "UNRELATED": "ignored",
        "KAIROS_NOT_A_SETTING": "ignored",
    })
    assert settings.port == 9001 and type(settings.port) is int
    assert (settings.partitions, settings.shards) == (32, 4)
    assert settings.snapshot_interval_s == 2.5 and type(settings.snapshot_interval_s) is float
    assert settings.auth_cache_s == 0.0
    assert settings.host == "0.0.0.0"
    assert settings.redis_url == "redis://cache:6379/2"
    assert settings.redis_fsync == "always"
    assert settings.data_path == Path("/tmp/kairos-data")


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAIROS_INGEST_ACTORS", "7")
    assert load_settings().ingest_actors == 7


def test_overrides_win_over_environment_and_none_means_unset() -> None:
    env = {"KAIROS_PORT": "9001", "KAIROS_HOST": "10.0.0.1"}
    settings = load_settings(env, port=9100, host=None)
    assert settings.port == 9100
    assert settings.host == "10.0.0.1"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("KAIROS_PORT", "eighty"),
        ("KAIROS_PARTITIONS", "1.5"),
        ("KAIROS_SHARDS", ""),
        ("KAIROS_MAX_BODY_BYTES", "8MB"),
        ("KAIROS_SNAPSHOT_INTERVAL_S", "soon"),
        ("KAIROS_REQUEST_TIMEOUT_S", "30s"),
    ],
)
def test_unparsable_value_names_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({var: value})
    assert var in str(info.value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize(
    ("env", "var"),
    [
        ({"KAIROS_PORT": "0"}, "KAIROS_PORT"),
        ({"KAIROS_PORT": "70000"}, "KAIROS_PORT"),
        ({"KAIROS_PARTITIONS": "-4"}, "KAIROS_PARTITIONS"),
        ({"KAIROS_SHARDS": "0"}, "KAIROS_SHARDS"),
        ({"KAIROS_INGEST_ACTORS": "0"}, "KAIROS_INGEST_ACTORS"),
        ({"KAIROS_MAX_INFLIGHT_UPLOADS": "0"}, "KAIROS_MAX_INFLIGHT_UPLOADS"),
        ({"KAIROS_SNAPSHOT_EVERY_RECORDS": "0"}, "KAIROS_SNAPSHOT_EVERY_RECORDS"),
        ({"KAIROS_DEDUPE_WINDOW_RECORDS": "-1"}, "KAIROS_DEDUPE_WINDOW_RECORDS"),
        ({"KAIROS_REDIS_FSYNC": "never"}, "KAIROS_REDIS_FSYNC"),
        ({"KAIROS_SNAPSHOT_INTERVAL_S": "0"}, "KAIROS_SNAPSHOT_INTERVAL_S"),
        ({"KAIROS_REQUEST_TIMEOUT_S": "-1"}, "KAIROS_REQUEST_TIMEOUT_S"),
        ({"KAIROS_AUTH_CACHE_S": "-1"}, "KAIROS_AUTH_CACHE_S"),
    ],
)
def test_out_of_range_value_names_the_variable(env: dict[str, str], var: str) -> None:
    with pytest.raises(ConfigError, match=var):
        load_settings(env)


def test_more_shards_than_partitions_is_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"KAIROS_PARTITIONS": "4", "KAIROS_SHARDS": "5"})
    assert "KAIROS_SHARDS" in str(info.value) and "KAIROS_PARTITIONS" in str(info.value)
    with pytest.raises(ConfigError, match="KAIROS_SHARDS"):
        Settings(partitions=4, shards=5)
    assert load_settings({"KAIROS_PARTITIONS": "4", "KAIROS_SHARDS": "4"}).shards == 4


def test_replace_validates_too() -> None:
    settings = Settings(partitions=8, shards=2)
    assert settings.replace(shards=8).shards == 8
    with pytest.raises(ConfigError, match="KAIROS_SHARDS"):
        settings.replace(shards=9)


def test_config_error_is_a_value_error() -> None:
    # Callers (the CLI) catch ValueError to print a one-line message.
    assert issubclass(ConfigError, ValueError)


def test_settings_are_immutable() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


@pytest.mark.parametrize("var", ["KAIROS_SNAPSHOT_INTERVAL_S", "KAIROS_REQUEST_TIMEOUT_S", "KAIROS_AUTH_CACHE_S"])
def test_nan_is_rejected(var: str) -> None:
    with pytest.raises(ConfigError, match=var):
        load_settings({var: "nan"})


def test_public_url_defaults_to_the_gateway_and_must_be_a_plain_http_url() -> None:
    assert load_settings({"KAIROS_PORT": "9001"}).public_base_url == "http://127.0.0.1:9001"
    assert load_settings({"KAIROS_PUBLIC_URL": "https://t.shop.test/"}).public_base_url == "https://t.shop.test"
    for bad in ("t.shop.test", "ftp://t.shop.test", "https://t.shop.test/?a=1", "https://"):
        with pytest.raises(ConfigError, match="KAIROS_PUBLIC_URL"):
            load_settings({"KAIROS_PUBLIC_URL": bad})


def test_the_sns_url_pattern_must_be_a_regular_expression() -> None:
    assert load_settings({}).sns_url_pattern.startswith("https://sns")
    with pytest.raises(ConfigError, match="KAIROS_SNS_URL_PATTERN"):
        load_settings({"KAIROS_SNS_URL_PATTERN": "https://(sns"})
