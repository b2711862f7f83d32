"""Registry addressing: plain HTTP only for loopback, references always name their registry."""

from __future__ import annotations

import pytest

from tasks.config import ImageParams
from tasks.registry import Reference, Registry, is_loopback

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:5000", True),
        ("localhost:5000", True),
        ("[::1]:5000", True),
        ("127.0.0.1", True),
        ("registry.example.com", False),
        ("10.0.0.5:5000", False),
        ("ghcr.io", False),
    ],
)
def test_plain_http_only_for_a_loopback_registry(host, loopback):
    assert is_loopback(host) is loopback
    registry = Registry(host, ImageParams(), environ={})
    assert registry.url.startswith("http://" if loopback else "https://")


@pytest.mark.parametrize(
    ("ref", "parts"),
    [
        (f"ghcr.io/team/serving@{DIGEST}", ("ghcr.io", "team/serving", None, DIGEST)),
        ("127.0.0.1:5000/churn-model:v1", ("127.0.0.1:5000", "churn-model", "v1", None)),
        ("localhost/m:v2", ("localhost", "m", "v2", None)),
    ],
)
def test_references_parse_into_registry_path_tag_digest(ref, parts):
    parsed = Reference.parse(ref)
    assert (parsed.registry, parsed.path, parsed.tag, parsed.digest) == parts
    assert str(parsed) == ref


@pytest.mark.parametrize("ref", ["churn-model:v1", "team/model@sha256:abc", "Bad/Upper"])
def test_references_without_a_registry_host_are_refused(ref):
    with pytest.raises(ValueError, match="not a full image reference"):
        Reference.parse(ref)


def test_env_credentials_take_precedence_over_the_docker_config():
    env = {"CTFLOWS_REGISTRY_USERNAME": "ci", "CTFLOWS_REGISTRY_PASSWORD": "s3cret"}
    registry = Registry("ghcr.io", ImageParams(), environ=env)
    assert registry.provider.auth._basic_auth  # sent on the registry's auth challenge
