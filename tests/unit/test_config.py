from __future__ import annotations

import pytest

from serving.config import ConfigError, Settings


def test_env_overrides_are_typed() -> None:
    s = Settings.from_env({"RANKSERVE_RECALL_N": "300", "RANKSERVE_BATCHING": "false",
                           "RANKSERVE_TRITON_URL": "127.0.0.1:8001"})
    assert (s.recall_n, s.batching, s.triton_url) == (300, False, "127.0.0.1:8001")


def test_empty_triton_url_means_launch() -> None:
    assert Settings.from_env({"RANKSERVE_TRITON_URL": ""}).triton_url is None


@pytest.mark.parametrize(("env", "needle"), [
    ({"RANKSERVE_RECALL_N": "abc"}, "RANKSERVE_RECALL_N='abc'"),
    ({"RANKSERVE_RECALL_N": "0"}, "RANKSERVE_RECALL_N='0'"),
    ({"RANKSERVE_CROSS_BACKEND": "tpu"}, "RANKSERVE_CROSS_BACKEND='tpu'"),
    ({"RANKSERVE_NOT_A_SETTING": "1"}, "RANKSERVE_NOT_A_SETTING"),
    ({"RANKSERVE_DEFAULT_K": "2000"}, "default_k"),
])
def test_bad_values_name_variable_and_value(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("'", ".").replace("(", r"\(")):
        Settings.from_env(env)


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises its own ValidationError
        s.recall_n = 5  # type: ignore[misc]
