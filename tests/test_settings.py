from __future__ import annotations

import pytest

from gateway.settings import SettingsError, build_settings


def test_precedence_cli_over_env_over_toml(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text('[gateway]\nrepo = "/from-toml"\nport = 7000\nlanes = 3\nmax_batch_rows = 64\n')
    settings = build_settings(
        {"config": str(config), "port": "9000", "repo": None},
        {"GATEWAY_PORT": "8001", "GATEWAY_LANES": "2", "GATEWAY_PROVIDER": "cpu"},
    )
    assert settings.port == 9000  # CLI
    assert settings.lanes == 2  # env beats file
    assert settings.max_batch_rows == 64 and settings.repo == "/from-toml"  # file
    assert settings.provider == "cpu"
    assert settings.request_rows_limit == 16 * 64


@pytest.mark.parametrize(
    ("cli", "message"),
    [
        ({"repo": "r", "max_batch_rows": "0"}, "max_batch_rows"),
        ({"repo": "r", "provider": "tpu"}, "provider"),
        ({"repo": "r", "port": "99999"}, "port"),
        ({"repo": "r", "lanes": "many"}, "lanes"),
        ({}, "no model repository"),
    ],
)
def test_bad_values_name_the_setting(cli, message):
    with pytest.raises(SettingsError, match=message):
        build_settings(cli, {})


def test_unknown_toml_key_is_refused(tmp_path):
    config = tmp_path / "g.toml"
    config.write_text('repo = "x"\nbatch = 3\n')
    with pytest.raises(SettingsError, match="unknown settings"):
        build_settings({"config": str(config)}, {})
