"""The toolkit's commands. Each task reads its settings from the invoke
configuration (defaults below, then invoke.yaml, then INVOKE_* environment
variables, then flags) and calls one function of the ci package."""

from pathlib import Path

from invoke import Collection, task

from ci import build, nix, run, transfer
from ci.edge import report_errors, say
from ci.project import Project

ROOT = Path(__file__).resolve().parent


def _project(c):
    return Project(ROOT, c.web.pkgs, c.web.images)


BUILDER_HELP = {
    "from-debian": "make the builder from this machine's Debian packages instead of pulling builder.image",
    "tool": "root filesystem tool for --from-debian: mmdebstrap (default) or debootstrap",
    "refresh-builder": "with --from-debian, make the Debian builder anew even if one exists",
}


@task(help=BUILDER_HELP)
@report_errors
def build_base(c, from_debian=False, tool=None, refresh_builder=False):
    """Build nix-base: the Nix builder with the pinned package set in its store."""
    image = build.build_base(_project(c), builder=c.builder.image, base=c.builder.base,
                             from_debian=from_debian, tool=tool or c.builder.tool,
                             refresh_builder=refresh_builder)
    say(f"{c.builder.base} {image.id}")


@task(help=BUILDER_HELP)
@report_errors
def build_cache(c, from_debian=False, tool=None, refresh_builder=False):
    """Build nix-base, then nix-cache: the builder with tools and the web closure pre-built."""
    image = build.build_cache_chain(_project(c), builder=c.builder.image, base=c.builder.base,
                                    cache=c.builder.cache, from_debian=from_debian,
                                    tool=tool or c.builder.tool, refresh_builder=refresh_builder)
    say(f"{c.builder.cache} {image.id}")


@task(help={"complete": "build in one multi-stage docker build (skopeo + umoci + FROM scratch) "
                        "instead of streaming the image out of a builder container"})
@report_errors
def build_web(c, complete=False):
    """Build the web image and load it into Docker as web:<tag> and web:latest."""
    image = build.build_web(_project(c), name=c.web.name, cache=c.builder.cache, complete=complete)
    for tag in image.tags:
        say(f"{tag} {image.id}")


@task(help={"port": "host port on 127.0.0.1 (default web.port, 9000)"})
@report_errors
def run_web(c, port=None):
    """Start web:latest on 127.0.0.1:9000 and return once it answers HTTP."""
    running = run.run_web(f"{c.web.name}:latest", name=c.web.container, host=c.web.host,
                          port=int(port or c.web.port), container_port=c.web.container_port,
                          timeout=c.web.timeout)
    say(running.url)


@task
@report_errors
def stop_web(c):
    """Stop and remove the web container started by run-web."""
    say("stopped" if run.stop_web(c.web.container) else "not running")


@task(iterable=["to"], help={
    "image": "image to push (web)",
    "to": "destination, repeatable: docker://REGISTRY/NAME[:TAG] or oci:DIR[:TAG]",
    "insecure": "skip TLS verification for non-loopback registries (loopback ones never verify)",
})
@report_errors
def push(c, image, to, insecure=False):
    """Copy a built image to registries or OCI layouts and print each digest."""
    ref = transfer.local_image(image, known=[c.web.name])
    for pushed in transfer.push(ref, to, insecure=insecure):
        say(f"{pushed.destination} {pushed.digest}")


@task(help={
    "image": "image to extract (web)",
    "to": "docker-archive:FILE.tar, oci:DIR[:TAG] or rootfs:DIR",
})
@report_errors
def extract(c, image, to):
    """Write a built image to a docker-archive, an OCI layout or a root filesystem."""
    ref = transfer.local_image(image, known=[c.web.name])
    say(str(transfer.extract(ref, to)))


@task
@report_errors
def check_nix(c):
    """Check that every Nix file of the project parses (needs Nix on the host, no nixpkgs)."""
    files = nix.parse_all(ROOT)
    say(f"{len(files)} Nix files parse")


ns = Collection(build_base, build_cache, build_web, run_web, stop_web, push, extract, check_nix)
ns.configure({
    "web": {
        "name": "web",  # the image name, as the images file sets it
        "pkgs": "nix/pkgs.nix",  # package set, relative to the project
        "images": "nix/images.nix",  # images file, relative to the project
        "container": "web",  # container name used by run-web and stop-web
        "host": "127.0.0.1",
        "port": 9000,
        "container_port": 8080,
        "timeout": 30,  # seconds run-web waits for an HTTP answer
    },
    "builder": {
        "image": None,  # None: the digest-pinned default of images/nix-base.Dockerfile
        "tool": "mmdebstrap",
        "base": "nix-base:latest",
        "cache": "nix-cache:latest",
    },
})
