"""The operator's settings come from the environment, with clear errors."""

import pytest

from modelloop.settings import Settings


def test_defaults_watch_the_whole_cluster_standalone() -> None:
    settings = Settings.from_env({})
    assert settings == Settings(namespaces=(), log_format="full", liveness_endpoint=None, peering=None)


def test_namespaces_are_a_comma_separated_list() -> None:
    settings = Settings.from_env({"MODELLOOP_NAMESPACES": " ml-team , ml-*,,"})
    assert settings.namespaces == ("ml-team", "ml-*")


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            "MODELLOOP_LOG_FORMAT": "JSON",
            "MODELLOOP_LIVENESS_ENDPOINT": "http://0.0.0.0:8080/healthz",
            "MODELLOOP_PEERING": "modelloop",
            "MODELLOOP_VERBOSE": "true",
        }
    )
    assert settings.log_format == "json"
    assert settings.liveness_endpoint == "http://0.0.0.0:8080/healthz"
    assert settings.peering == "modelloop"
    assert settings.verbose is True


def test_an_unknown_log_format_is_refused_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="MODELLOOP_LOG_FORMAT"):
        Settings.from_env({"MODELLOOP_LOG_FORMAT": "xml"})


def test_priority_is_an_integer_or_absent() -> None:
    assert Settings.from_env({"MODELLOOP_PRIORITY": "100"}).priority == 100
    assert Settings.from_env({}).priority is None
    with pytest.raises(ValueError, match="MODELLOOP_PRIORITY"):
        Settings.from_env({"MODELLOOP_PRIORITY": "high"})


def test_archived_versions_kept_default_to_ten_and_may_be_zero_but_not_negative() -> None:
    assert Settings.from_env({}).keep_archived == 10
    assert Settings.from_env({"MODELLOOP_KEEP_ARCHIVED": "0"}).keep_archived == 0
    assert Settings.from_env({"MODELLOOP_KEEP_ARCHIVED": "3"}).keep_archived == 3
    with pytest.raises(ValueError, match="MODELLOOP_KEEP_ARCHIVED must be at least 0"):
        Settings.from_env({"MODELLOOP_KEEP_ARCHIVED": "-1"})


def test_the_peering_lifetime_is_read_bounded_and_given_to_kopf() -> None:
    import asyncio

    import kopf

    from modelloop.controllers.kopf_settings import configure

    assert Settings.from_env({}).peering_lifetime == 60
    assert Settings.from_env({"MODELLOOP_PEERING_LIFETIME": "8"}).peering_lifetime == 8
    for bad, said in (("4", "at least 5"), ("601", "at most 600"), ("soon", "an integer")):
        with pytest.raises(ValueError, match=f"MODELLOOP_PEERING_LIFETIME must be {said}"):
            Settings.from_env({"MODELLOOP_PEERING_LIFETIME": bad})
    kopf_settings = kopf.OperatorSettings()
    memo = kopf.Memo(settings=Settings(peering_lifetime=8))
    asyncio.run(configure(settings=kopf_settings, memo=memo))
    assert kopf_settings.peering.lifetime == 8
