"""Runner settings, without Nix or Docker: what `invoke start` and `stop` read from the configuration."""

import pytest

import tasks
from ci import services
from ci.core.errors import ConfigError

SERVICES = {
    "file": "nix/services.nix",
    "attr": "services-run",
    "images": "nix/services.nix",
    "image": "services",
    "ports": ["9080:8080", "9081:8081"],
    "container": "services",
    "host": "127.0.0.1",
    "timeout": 30,
}


def test_an_entry_reads_every_setting():
    entry = services.entry("services", SERVICES, known=["services"], images="nix/images.nix")
    assert entry == services.StartEntry("services", "nix/services.nix", "services-run", "nix/services.nix", "services",
                                    ((9080, 8080), (9081, 8081)), "services", "127.0.0.1", 30.0)


def test_defaults_images_file_container_name_host_and_timeout():
    entry = services.entry("nginx", {"file": "nix/runner.nix", "attr": "run", "image": "web", "ports": ["9090:8080"]},
                           known=["nginx"], images="nix/images.nix")
    assert (entry.images, entry.container, entry.host, entry.timeout) == ("nix/images.nix", "nginx", "127.0.0.1", 30.0)


def test_no_attribute_means_the_file_is_the_runner_and_no_image_means_no_container():
    entry = services.entry("x", {"file": "x.nix", "attr": None, "image": None, "ports": []}, known=["x"], images="i.nix")
    assert entry.attr is None and entry.image is None


def test_publish_replaces_the_configured_ports():
    entry = services.entry("services", SERVICES, known=["services"], images="i.nix", publish=["1:2"])
    assert entry.ports == ((1, 2),)


def test_an_unknown_runner_is_refused_with_the_known_ones():
    with pytest.raises(ConfigError) as refused:
        services.entry("postgres", None, known=["services", "nginx"], images="i.nix")
    assert refused.value.line() == ("unknown runner 'postgres'; known runners: services, nginx (start in invoke.yaml)")


def test_a_runner_without_a_file_is_refused():
    with pytest.raises(ConfigError) as refused:
        services.entry("half", {"ports": []}, known=["half"], images="i.nix")
    assert refused.value.line() == "the runner half has no file; set start.half.file in invoke.yaml"


@pytest.mark.parametrize("spec", ["9080", "a:b", "0:8080", "9080:70000", "127.0.0.1:9080:8080", ""])
def test_bad_port_mappings_are_refused(spec):
    with pytest.raises(ConfigError) as refused:
        services.parse_ports([spec], "--publish")
    assert refused.value.line() == f"bad port mapping '{spec}' in --publish; write HOST:CONTAINER, e.g. 9080:8080"


def test_port_mappings_keep_their_order():
    assert services.parse_ports(["9081:8081", "9080:8080"], "x") == ((9081, 8081), (9080, 8080))


def test_the_default_configuration_names_both_runners_and_the_services_image():
    runners = tasks.ns.configuration()["start"]
    assert set(runners) == {"services", "nginx"}
    for name, settings in runners.items():
        entry = services.entry(name, settings, known=list(runners), images="nix/images.nix")
        assert entry.image and entry.ports, name
    assert runners["services"]["image"] == "services" and runners["nginx"]["file"] == "nix/runner.nix"
