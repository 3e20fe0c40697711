"""The toolkit's commands. Each task reads its settings from the invoke
configuration (defaults below, then invoke.yaml, then INVOKE_* environment
variables, then flags) and calls one function of the ci package."""

import contextlib
import logging
import os
from pathlib import Path

from invoke import Collection, task

# Only what build-web needs is imported here; the other tasks import their
# tool's module themselves, so that no task pays for loading them all.
from ci import build, github, settings
from ci.build import BuilderSettings
from ci.cache import CacheSettings
from ci.core import files
from ci.core.errors import ConfigError
from ci.edge import check_settings, report_errors, say
from ci.project import Project

HERE = Path(__file__).resolve().parent


def _project(c):
    from ci.labels import Settings as LabelSettings

    return Project(Path(c.project.root or HERE), c.web.pkgs, c.web.images,
                   LabelSettings(c.labels.source, c.labels.licenses, c.labels.version))


def _setting(c, key, given=None, option=None):
    """The flag `option`'s value when given, checked as the setting `key` is; else the configuration's, which
    was checked when this file was imported (ci/settings.py)."""
    flagged = settings.flag(key, given, option) if option else None
    return settings.value(c.config, key) if flagged is None else flagged


def _builder(c, from_debian=False, tool=None, refresh_builder=False, suite=None):
    return BuilderSettings(c.builder.image, from_debian or c.builder.from_debian, _setting(c, "builder.tool", tool, "--tool"),
                           refresh_builder, _setting(c, "builder.suite", suite, "--suite"))


def _cache(c, namespace=None):
    """Where the builder images live; `namespace` is --cache-from, else builder.registry."""
    return CacheSettings(c.builder.base, c.builder.cache, _setting(c, "builder.registry", namespace, "--cache-from"),
                         c.builder.max_age_days, _public_key(c))


BUILDER_HELP = {
    "from-debian": "make the builder from this machine's Debian packages instead of pulling builder.image",
    "tool": "root filesystem tool for --from-debian: mmdebstrap (default) or debootstrap",
    "refresh-builder": "with --from-debian, make the Debian builder anew even if one exists",
    "suite": "with --from-debian, the Debian release to make the builder from (default builder.suite: trixie, "
             "whose Nix 2.26 evaluates the pinned nixpkgs)",
}


@task(help=BUILDER_HELP)
@report_errors
def build_base(c, from_debian=False, tool=None, refresh_builder=False, suite=None):
    """Build nix-base: the Nix builder with the pinned package set in its store."""
    image = build.build_base(_project(c), _builder(c, from_debian, tool, refresh_builder, suite), base=c.builder.base)
    say(f"{c.builder.base} {image.id}")


SIGN_KEY_HELP = ("sign with this cosign private key (default signing.key; passphrase in COSIGN_PASSWORD) and attach "
                 "the SBOM and provenance, signed too, before any tag is written")


def _push_options(c, image, sign_key=None):
    """What a push adds to `image`: the commit's annotations, and with a signing key its signatures, SBOM, provenance."""
    from ci import publish

    project = _project(c)
    key = _key_path(c, sign_key, c.signing.key) if sign_key or c.signing.key else None
    return publish.options_for(project.root, image, key=key, label_settings=project.labels, package_set=project.pkgs,
                               package_set_id=project.package_set_id())


def _public_key(c, key=None):
    """The public key pulls must be signed with (signing.public_key), or None: unsigned pulls are allowed."""
    configured = key or c.signing.public_key
    return _key_path(c, key, configured) if configured else None


REMOTE_HELP = {
    "builders": "remote builders in Nix's builders syntax, ';'-separated: 'ssh-ng://USER@HOST[:PORT] SYSTEMS - "
                "MAX-JOBS SPEED FEATURES' (default remote.builders); their host keys must be pinned (remote.known_hosts)",
    "builders_key": "the builders' SSH private key file (default remote.ssh_key_file, else the NIX_CI_BUILDERS_SSH_KEY "
                    "variable)",
    "remote_only": "build nothing here, every derivation on the builders: max-jobs = 0 (default: not remote.local_builds)",
    "fallback_local": "when no builder answers, build here instead of failing (default remote.fallback)",
}


def _remote(c, builders=None, key=None, remote_only=False, fallback_local=False):
    """The remote builders (ci.remote) from the flags and the remote configuration; None without any."""
    spec = builders or c.remote.builders
    if not spec:
        if remote_only or key:
            raise ConfigError("--remote-only and --builders-key need remote builders", "name them with --builders "
                              "or remote.builders")
        return None
    from ci import remote

    configured = c.remote.ssh_key_file
    return remote.settings(
        builders=spec, key_file=_key_path(c, key, configured) if key or configured else None,
        known_hosts_file=_key_path(c, None, c.remote.known_hosts) if c.remote.known_hosts else None,
        host_keys=c.remote.host_keys, local_builds=not remote_only and c.remote.local_builds,
        fallback=fallback_local or c.remote.fallback, network=c.remote.network)


def _share(c, reference):
    """Where build-web shares the store paths it added (ci.remote.Share); None: nowhere."""
    reference = reference or c.remote.share
    if not reference:
        return None
    from ci import bundles, remote

    return remote.Share(reference, bundles.read_secret_key(_key_path(c, None, c.bundle.secret_key)))


SUBSTITUTER_HELP = ("a binary cache or bundle in a registry (REGISTRY/NAME:TAG, as cache-push wrote it) to substitute "
                    "built paths from, checked against bundle.public_key (default bundle.substituter)")


@task(help={**BUILDER_HELP, "push": "also push nix-base and nix-cache to this namespace (REGISTRY/PATH), "
                                     "tagged by date, by package set (pkgs-<hash>) and latest",
            "substituter": SUBSTITUTER_HELP, "sign_key": f"with --push, {SIGN_KEY_HELP}", **REMOTE_HELP})
@report_errors
def build_cache(c, from_debian=False, tool=None, refresh_builder=False, suite=None, push=None, substituter=None,
                sign_key=None, builders=None, builders_key=None, remote_only=False, fallback_local=False):
    """Build nix-base, then nix-cache: the builder with tools and the web closure pre-built."""
    builder, cache = _builder(c, from_debian, tool, refresh_builder, suite), _cache(c)
    remote = _remote(c, builders, builders_key, remote_only, fallback_local)
    with _substituter(c, substituter) as pulled:
        image = build.build_cache(_project(c), builder, cache, substituter=pulled, remote=remote)
    say(f"{c.builder.cache} {image.id}")
    github.report("build-cache", github.built(c.builder.cache, image))
    if push:  # publish only what works: a web build on the new cache first
        smoke = build.build_web(_project(c), _builder(c), _cache(c), name=c.web.name, complete=False, attr=c.web.attr)
        say(f"smoke test: {smoke.tags[0]} built on the new cache")
    for pushed in build.publish_cache(_project(c), _cache(c), push, options=lambda image: _push_options(c, image, sign_key))\
            if push else []:
        say(pushed.line())
        github.report("build-cache", github.pushed(pushed))


@task(help={
    "complete": "build in one multi-stage docker build (skopeo + umoci + FROM scratch) "
                "instead of streaming the image out of a builder container",
    "cache-from": "namespace (REGISTRY/PATH) to pull nix-cache from when there is no local one "
                  "(default builder.registry)",
    "substituter": SUBSTITUTER_HELP,
    **REMOTE_HELP,
    "share": "after the build, push the store paths it added, signed with bundle.secret_key, to this registry "
             "binary cache (REGISTRY/NAME:TAG, as cache-push writes; default remote.share) for the next --substituter",
})
@report_errors
def build_web(c, complete=False, cache_from=None, substituter=None, builders=None, builders_key=None,
              remote_only=False, fallback_local=False, share=None):
    """Build the web image and load it into Docker as web:<tag> and web:latest."""
    builder, cache = _builder(c), _cache(c, cache_from)
    remote = _remote(c, builders, builders_key, remote_only, fallback_local)
    shared = _share(c, share)
    with _substituter(c, substituter) as pulled:
        image = build.build_web(_project(c), builder, cache, name=c.web.name, complete=complete, substituter=pulled,
                                attr=c.web.attr, remote=remote, share=shared)
    for tag in image.tags:
        say(f"{tag} {image.id}")
    github.report("build-web", github.built(c.web.name, image))


@task(help={"complete": "check the complete flow (one multi-stage docker build) instead of the load flow"})
@report_errors
def verify_reproducible(c, complete=False):
    """Build the web image twice from scratch and compare; say where the builds first differ."""
    verdict = build.verify_reproducible(_project(c), _cache(c), name=c.web.name, complete=complete)
    say(f"{verdict.first} {verdict.second}")
    verdict.require()
    say("reproducible: both builds gave the same image")


@task(help={"port": "host port on 127.0.0.1 (default web.port, 9000)"})
@report_errors
def run_web(c, port=None):
    """Start web:latest on 127.0.0.1:9000 and return once it answers HTTP."""
    from ci import containers

    running = containers.run_web(f"{c.web.name}:latest", name=c.web.container, host=c.web.host,
                                 port=_setting(c, "web.port", port, "--port"), container_port=c.web.container_port,
                                 timeout=c.web.timeout)
    say(running.urls[0])


@task
@report_errors
def stop_web(c):
    """Stop and remove the web container started by run-web."""
    from ci import containers

    say("stopped" if containers.stop_web(c.web.container) else "not running")


def _runner(c, name, publish=None):
    from ci import services

    return services.entry(name, c.start.get(name), known=list(c.start), images=c.web.images, publish=publish)


def _runner_image(c, entry, cache_from=None):
    """Build the runner's image with the web image's flow (a no-op when it is up to date)."""
    if entry.image is None:
        raise ConfigError(f"the runner {entry.name} has no image", f"set start.{entry.name}.image in invoke.yaml")
    project = Project(Path(c.project.root or HERE), c.web.pkgs, entry.images, _project(c).labels)
    return build.build_image(project, _builder(c), _cache(c, cache_from), name=entry.image, attr=entry.image)


@task(help={"cache-from": "namespace (REGISTRY/PATH) to pull nix-cache from when there is no local one "
                          "(default builder.registry)"})
@report_errors
def build_services(c, cache_from=None):
    """Build the services image (nginx and a status page under s6-svscan) as web's: services:<tag>, services:latest."""
    entry = _runner(c, "services")
    image = _runner_image(c, entry, cache_from)
    for tag in image.tags:
        say(f"{tag} {image.id}")
    github.report("build-services", github.built(entry.image, image))


@task(iterable=["publish", "arg"], help={
    "runner": "what to start: a name of the start configuration, services (nginx and a status page under s6) or nginx",
    "container": "build the runner's image (as build-web does) and start it as a container, returning once "
                 "its ports answer HTTP; without it, build the runner with this machine's Nix and run it here "
                 "until Ctrl-C",
    "publish": "with --container, HOST:CONTAINER port to publish on 127.0.0.1, repeatable (default start.NAME.ports)",
    "arg": "in the foreground, an argument for bin/run, repeatable (the services runner takes its scan directory)",
})
@report_errors
def start(c, runner, container=False, publish=None, arg=None):
    """Start a runner (services, nginx): in the foreground, or as a container with --container."""
    from ci import services

    entry = _runner(c, runner, publish)
    if container:
        image = _runner_image(c, entry)
        started = services.start_container(entry, image.tags[-1])
        for url in started.urls:
            say(url)
        return
    path = services.build_runner(Path(c.project.root or HERE), entry, c.web.pkgs)
    services.run_foreground(runner, path, list(arg or []))
    say(f"{runner} stopped")


@task(help={"runner": "the runner whose container to stop (services, nginx)",
            "grace": "seconds between docker stop's SIGTERM and its SIGKILL (default 10)"})
@report_errors
def stop(c, runner, grace=None):
    """Stop and remove a runner's container: SIGTERM, then SIGKILL after the grace time."""
    from ci import services

    grace = settings.flag("stop.grace", grace, "--grace")
    entry = _runner(c, runner)
    stopped = services.stop_container(entry.container, 10 if grace is None else grace)
    if stopped is None:
        say("not running")
        return
    say(f"{'killed' if stopped.killed else 'stopped'} in {stopped.seconds:.1f} s")


@task(iterable=["to"], help={
    "image": "image to push: web or services, optionally NAME:TAG (default tag latest)",
    "to": "destination, repeatable: docker://REGISTRY/NAME[:TAG] or oci:DIR[:TAG]; "
          "without a tag, every tag of the image (id-…, date, latest last)",
    "insecure": "skip TLS verification for non-loopback registries (loopback ones never verify)",
    "sign_key": SIGN_KEY_HELP,
})
@report_errors
def push(c, image, to, insecure=False, sign_key=None):
    """Copy a built image to registries or OCI layouts and print each digest."""
    from ci import transfer

    ref = transfer.local_image(image, known=[c.web.name, c.start.services.image])
    for pushed in transfer.push(ref, to, insecure=insecure, options=_push_options(c, ref, sign_key)):
        say(pushed.line())
        github.report("push", github.pushed(pushed))


def _artifact_key(c, sign_key=None):
    """The signing key for an artifact push (cache-push, push-vm), unlocked before anything is sent; None: unsigned."""
    if not (sign_key or c.signing.key):
        return None
    from ci.tools import cosign

    key = _key_path(c, sign_key, c.signing.key)
    cosign.unlock(key)
    return key


def _sign_artifact(pinned, key, insecure):
    """Sign an artifact just pushed. (oras writes its tag with the manifest: the signature follows it.)"""
    if key is not None:
        from ci.tools import cosign

        cosign.sign(pinned, key, insecure=insecure)


@task(help={
    "prefix": "where to write the pair: PREFIX.key and PREFIX.pub (default: signing.key without .key)",
    "force": "replace an existing pair (what it signed then verifies only with the old public key)",
})
@report_errors
def sign_key(c, prefix=None, force=False):
    """Make the cosign key pair that signs pushed images (passphrase from COSIGN_PASSWORD), outside the repository."""
    from ci.tools import cosign

    path = _key_path(c, prefix, str(c.signing.key or "~/.config/nix-ci/cosign.key").removesuffix(".key"))
    pair = cosign.generate_key_pair(path, force=force)
    say(f"{pair.private} private key: keep it private")
    say(f"{pair.public} {cosign.read_public_key(pair.public)}")


@task(help={
    "reference": "the image: REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:...",
    "key": "the public key it must be signed with (default signing.public_key)",
    "insecure": "skip TLS verification for non-loopback registries (loopback ones speak plain HTTP)",
})
@report_errors
def verify(c, reference, key=None, insecure=False):
    """Check an image's signature, and its attached SBOM and provenance; print what was verified."""
    from ci import verify as ci_verify

    public_key = _public_key(c, key)
    if public_key is None:
        raise ConfigError("no public key to verify with", "pass --key FILE.pub or set signing.public_key")
    for line in ci_verify.check(reference, public_key, insecure=insecure).lines():
        say(line)


@task(help={
    "reference": "the image: REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:...",
    "output": "write the SBOM to this file instead of printing it",
    "key": "the public key the image and its SBOM must be signed with (default signing.public_key; none: unchecked)",
    "insecure": "skip TLS verification for non-loopback registries (loopback ones speak plain HTTP)",
})
@report_errors
def sbom(c, reference, output=None, key=None, insecure=False):
    """Find the CycloneDX SBOM attached to an image; print it or write it to a file."""
    from ci import verify as ci_verify

    pinned, document = ci_verify.sbom_document(reference, _public_key(c, key), insecure=insecure)
    if not output:
        say(document)
        return
    from ci import sbom as ci_sbom

    target = Path(output).absolute()
    ci_sbom.write(target, document)
    say(f"{target} {pinned} {len(ci_sbom.store_paths(document))} store paths")


@task(help={
    "image": "image to extract: web or services, optionally NAME:TAG (default tag latest)",
    "to": "docker-archive:FILE.tar, oci:DIR[:TAG] or rootfs:DIR",
})
@report_errors
def extract(c, image, to):
    """Write a built image to a docker-archive, an OCI layout or a root filesystem."""
    from ci import transfer

    ref = transfer.local_image(image, known=[c.web.name, c.start.services.image])
    say(str(transfer.extract(ref, to)))


@task
@report_errors
def check_nix(c):
    """Check that every Nix file of the project parses (needs Nix on the host, no nixpkgs)."""
    from ci.tools import nix

    files = nix.parse_all(_project(c).root)
    say(f"{len(files)} Nix files parse")


@task(help={
    "check": "fail (one line naming file, job and step) unless every workflow runs only real tasks and flags, "
             "every task declared for CI has its workflow, and the files pass the schema, actionlint, zizmor "
             "and the permission, trigger and pinning rules",
    "dir": "workflow directory to read (default .github/workflows of the project)",
})
@report_errors
def workflows(c, check=False, dir=None):
    """Show which invoke commands each GitHub workflow runs; --check proves they mirror the tasks."""
    from ci import workflows as ci_workflows

    root = Path(c.project.root or HERE)
    directory = Path(dir) if dir else root / ci_workflows.DIRECTORY
    if not check:
        for line in ci_workflows.mirror(directory, root):
            say(line)
        return
    readme = root / "README.md"
    report = ci_workflows.check(directory, root, ns, examples=readme if readme.exists() and not dir else None)
    say(f"ok: {report.files} workflow files and {report.examples} in README.md, {report.invocations} invoke commands, "
        f"all real; schema valid; actionlint {report.actionlint}; zizmor {report.zizmor}")


@task
@report_errors
def lock(c):
    """Regenerate the hash-locked requirements files from pyproject.toml's pins (uv pip compile)."""
    from ci import lock as ci_lock

    for written in ci_lock.regenerate(Path(c.project.root or HERE)):
        say(f"{written.path.name}: {len(written.pins)} packages, each pinned with its hashes")


def _path(c, flag, configured):
    """A path given on the command line is relative to where invoke runs; one from the configuration, to the project."""
    return Path(flag).absolute() if flag else Path(c.project.root or HERE) / configured


@task(iterable=["ssh_key", "ssh_key_file"], help={
    "ssh_key": "an SSH public key allowed to log in (repeatable); replaces vm.ssh_keys and vm.ssh_key_files",
    "ssh_key_file": "a public key file, e.g. ~/.ssh/id_ed25519.pub (repeatable); replaces vm.ssh_keys and vm.ssh_key_files",
    "hostname": "the VM's host name (default vm.hostname, nixos)",
    "disk_size": "disk size in MiB, or auto (default vm.disk_size, 8192)",
    "output": "where to write the qcow2 (default vm.image, build/vm/nixos.qcow2)",
    "kvm": "give the build's VM /dev/kvm when usable (default); --no-kvm builds with TCG emulation, much slower",
    **REMOTE_HELP,
})
@report_errors
def build_vm(c, ssh_key=None, ssh_key_file=None, hostname=None, disk_size=None, output=None, kvm=True, builders=None,
             builders_key=None, remote_only=False, fallback_local=False):
    """Build the NixOS VM image (qcow2) in the builder container; print its path and size."""
    from ci import vm

    given = bool(ssh_key or ssh_key_file)
    settings = vm.settings(
        keys=ssh_key if given else vm.as_list(c.vm.ssh_keys, "\n"),
        key_files=ssh_key_file if given else vm.as_list(c.vm.ssh_key_files, os.pathsep),
        user=c.vm.user, hostname=_setting(c, "vm.hostname", hostname, "--hostname"),
        disk_size=_setting(c, "vm.disk_size", disk_size, "--disk-size"),
    )
    from ci.tools import qemu

    accel = qemu.acceleration(kvm)
    with files.output(_path(c, output, c.vm.image), "file", "--output (vm.image)") as path:
        built = vm.build_vm(Path(c.project.root or HERE), builder=c.builder.base, expression=c.vm.expression,
                            pkgs=c.web.pkgs, vm_settings=settings, output=path, accel=accel,
                            remote=_remote(c, builders, builders_key, remote_only, fallback_local))
    say(f"{built.path} {built.size} bytes ({built.virtual_size} bytes virtual)")


@task(help={
    "user_data": "user-data file (default: an empty #cloud-config mapping); #cloud-config is checked against "
                 "cloud-init's schema (vm.cloud_config_schema) before anything is written",
    "meta_data": "meta-data file (default: made from --hostname and --instance-id)",
    "network_config": "network-config file (optional)",
    "vendor_data": "vendor-data file (optional)",
    "hostname": "local-hostname in the meta-data made (default vm.hostname, nixos)",
    "instance_id": "instance-id in the meta-data made (default: derived from the user-data)",
    "output": "where to write the disk (default vm.seed, build/vm/cidata.img)",
    "format": "vfat (default vm.seed_format) or iso9660",
})
@report_errors
def cidata(c, user_data=None, meta_data=None, network_config=None, vendor_data=None, hostname=None,
           instance_id=None, output=None, format=None):
    """Make a cloud-init NoCloud seed disk (label cidata) and check it by reading it back."""
    def given(path):
        return Path(path).expanduser() if path else None

    from ci import cidata as ci_cidata

    fmt = _setting(c, "vm.seed_format", format, "--format")
    hostname = settings.flag("vm.hostname", hostname, "--hostname")
    seed = ci_cidata.make_seed(
        _path(c, output, c.vm.seed), fmt=fmt,
        user_data=given(user_data), meta_data_file=given(meta_data),
        network_config=given(network_config), vendor_data=given(vendor_data),
        hostname=hostname or (None if meta_data else c.vm.hostname), instance_id=instance_id,
        cloud_config_schema=_path(c, None, given(c.vm.cloud_config_schema)) if c.vm.cloud_config_schema else None,
    )
    say(f"{seed.path} {seed.format} {seed.size} bytes {seed.digest} ({', '.join(f.name for f in seed.files)})")


@task(help={
    "image": "the qcow2 to boot (default vm.image); never written: snapshot mode",
    "seed": "the cloud-init seed disk (default vm.seed)",
    "without_seed": "boot without a seed disk",
    "port": "host port on 127.0.0.1 forwarded to the VM's SSH (default vm.ssh_port, 2222)",
    "memory": "memory in MiB (default vm.memory, 2048)",
    "cpus": "virtual CPUs (default vm.cpus, 2)",
    "kvm": "use KVM when /dev/kvm is usable (default); --no-kvm emulates with TCG",
})
@report_errors
def run_vm(c, image=None, seed=None, without_seed=False, port=None, memory=None, cpus=None, kvm=True):
    """Boot the VM image with qemu on this terminal (serial console; Ctrl-a x quits); print the SSH command."""
    from ci import vm

    port, memory, cpus = (_setting(c, "vm.ssh_port", port, "--port"), _setting(c, "vm.memory", memory, "--memory"),
                          _setting(c, "vm.cpus", cpus, "--cpus"))
    spec = vm.prepare_vm(_path(c, image, c.vm.image), None if without_seed else _path(c, seed, c.vm.seed),
                         host=c.vm.host, port=port, memory=memory, cpus=cpus, want_kvm=kvm, cpu=c.vm.cpu)
    say(vm.ssh_command(c.vm.user, spec.ssh_host, spec.ssh_port))
    vm.start(spec)


@task(help={
    "to": "destination REGISTRY/NAME[:TAG], e.g. 127.0.0.1:5000/vm/nixos:1",
    "image": "the qcow2 to push (default vm.image)",
    "seed": "the seed disk to push with it (default vm.seed, when that file exists)",
    "without_seed": "push the disk alone",
    "insecure": "skip TLS verification for non-loopback registries (loopback ones speak plain HTTP)",
    "sign_key": "sign the artifact with this cosign private key (default signing.key)",
})
@report_errors
def push_vm(c, to, image=None, seed=None, without_seed=False, insecure=False, sign_key=None):
    """Push the VM image and its seed disk to a registry as one OCI artifact; print its digest."""
    from ci import vm

    seed_path = None if without_seed else _path(c, seed, c.vm.seed)
    if not seed and seed_path is not None and not seed_path.exists():
        seed_path = None  # the default seed is optional
    key = _artifact_key(c, sign_key)
    artifact = vm.push_vm(to, _path(c, image, c.vm.image), seed_path, insecure=insecure)
    _sign_artifact(artifact.pinned, key, insecure)
    say(artifact.pinned)
    for layer in artifact.layers:
        say(f"{layer.title} {layer.digest} {layer.size} {layer.media_type}")


@task(help={
    "source": "the artifact: REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:...",
    "to": "directory to write the files into (default: the directory of vm.image)",
    "insecure": "skip TLS verification for non-loopback registries (loopback ones speak plain HTTP)",
})
@report_errors
def pull_vm(c, source, to=None, insecure=False):
    """Pull a VM image artifact and check every file against its digest; print the files."""
    from ci import vm

    directory = Path(to).absolute() if to else _path(c, None, c.vm.image).parent
    with files.output(directory, "directory", "--to") as directory:
        pulled = vm.pull_vm(source, directory, insecure=insecure)
    say(pulled.artifact.pinned)
    for layer, path in zip(pulled.artifact.layers, pulled.files, strict=True):
        say(f"{path} {layer.digest} verified")


# --- closure bundles and binary caches (ci/bundles/) ---------------------------------


def _key_path(c, flag, configured):
    """A key file: ~ expanded; a relative path from the configuration is relative to the project."""
    path = Path(flag or configured).expanduser()
    return path.absolute() if flag or path.is_absolute() else Path(c.project.root or HERE) / path


def _trusted_keys(c, public_key=None):
    """bundle.public_key (when it exists, or when given) and bundle.trusted_keys."""
    from ci import bundles

    path = _key_path(c, public_key, c.bundle.public_key)
    keys = c.bundle.trusted_keys or []
    return bundles.public_keys([path] if public_key or path.exists() else [], [keys] if isinstance(keys, str) else keys)


def _substituter(c, reference):
    """The registry-hosted binary cache a build substitutes from, pulled for the build; None without one."""
    reference = _setting(c, "bundle.substituter", reference, "--substituter")
    if not reference:
        return contextlib.nullcontext(None)
    from ci import bundles

    public_key = _public_key(c)
    if public_key is not None:  # signing.public_key: only a substituter it signed, pinned to what was verified
        from ci import verify
        from ci.core.errors import RegistryError

        try:
            reference = verify.require(reference, public_key)
        except RegistryError as exc:
            logging.getLogger("ci").warning("warning: cannot use the substituter %s: %s; building without it",
                                            reference, exc.message)
            return contextlib.nullcontext(None)
    return bundles.substituter(reference, _trusted_keys(c))


@task(help={
    "name": "the key's name, written into every signature (default bundle.key_name, else <host name>-1)",
    "force": "replace an existing key pair (runners that trust only the old key then refuse new bundles)",
})
@report_errors
def bundle_key(c, name=None, force=False):
    """Generate the key pair that signs bundles (bundle.secret_key, bundle.public_key), outside the repository."""
    from ci import bundles

    name = _setting(c, "bundle.key_name", name, "--name") or bundles.default_key_name()
    secret, public = _key_path(c, None, c.bundle.secret_key), _key_path(c, None, c.bundle.public_key)
    with files.output(secret, "file", "bundle.secret_key") as secret, files.output(public, "file", "bundle.public_key") as public:
        pair = bundles.generate_key(builder=c.builder.base, name=name, secret=secret, public=public, force=force,
                                    project=Path(c.project.root or HERE))
    say(f"{pair.secret} secret key: keep it private")
    say(f"{pair.public} {pair.public_key}")


@task(help={
    "expression": "the Nix file to build, relative to the project (default bundle.expression, nix/runner.nix)",
    "attr": "the attribute to bundle (default bundle.attr, run: a package with bin/run)",
    "output": "where to write the tarball (default bundle.output, build/bundle/closure.tar)",
    "secret_key": "the secret key file to sign with (default bundle.secret_key)",
    "compression": "NAR compression: zstd (default bundle.compression), xz, bzip2 or none",
    **REMOTE_HELP,
})
@report_errors
def bundle(c, expression=None, attr=None, output=None, secret_key=None, compression=None, builders=None,
           builders_key=None, remote_only=False, fallback_local=False):
    """Build the runner in the builder container; write one signed bundle: its binary cache and result link."""
    from ci import bundles

    expression, attr, compression = (_setting(c, "bundle.expression", expression, "--expression"),
                                     _setting(c, "bundle.attr", attr, "--attr"),
                                     _setting(c, "bundle.compression", compression, "--compression"))
    with files.output(_path(c, output, c.bundle.output), "file", "--output (bundle.output)") as path:
        made = bundles.make_bundle(Path(c.project.root or HERE), builder=c.builder.base, expression=expression,
                                   attr=attr, pkgs=c.web.pkgs, secret_key=_key_path(c, secret_key, c.bundle.secret_key),
                                   output=path, compression=compression,
                                   remote=_remote(c, builders, builders_key, remote_only, fallback_local))
    say(f"{made.path} {made.size} bytes {made.store_path} ({len(made.closure)} paths, "
        f"signed by {', '.join(made.cache.signers)})")


@task(help={"public_key": "the public key file bundles must be signed with (default bundle.public_key; "
                          "bundle.trusted_keys are trusted too)"})
@report_errors
def build_runner(c, public_key=None):
    """Build the runner image: at start it restores a bundle (volume or registry) into its store, then runs it."""
    from ci import bundles

    image = bundles.build_runner_image(Path(c.project.root or HERE), base=c.builder.base, tag=c.bundle.runner_image,
                                         keys=_trusted_keys(c, public_key))
    say(f"{c.bundle.runner_image} {image.id}")


@task(help={
    "to": "destination REGISTRY/NAME[:TAG], e.g. 127.0.0.1:5000/bundles/runner:1",
    "bundle": "the bundle to push (default bundle.output)",
    "cache": "push this binary cache directory (nix copy --to file://DIR) instead, one layer per file",
    "insecure": "skip TLS verification for non-loopback registries (loopback ones speak plain HTTP)",
    "sign_key": "sign the artifact with this cosign private key (default signing.key)",
})
@report_errors
def cache_push(c, to, bundle=None, cache=None, insecure=False, sign_key=None):
    """Push a bundle, or a whole binary cache directory, to a registry as an OCI artifact; print its digest."""
    from ci import bundles

    if bundle and cache:
        raise ConfigError("give --bundle or --cache, not both", "a bundle already holds its binary cache")
    key = _artifact_key(c, sign_key)
    if cache:
        artifact = bundles.push_cache(to, Path(cache).absolute(), insecure=insecure)
    else:
        artifact = bundles.push_bundle(to, _path(c, bundle, c.bundle.output), insecure=insecure)
    _sign_artifact(artifact.pinned, key, insecure)
    say(artifact.pinned)
    say(f"{artifact.artifact_type} {len(artifact.layers)} files {sum(layer.size for layer in artifact.layers)} bytes")


@task(help={
    "source": "the artifact: REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:...",
    "to": "where to write it: the bundle file (default bundle.output) or the binary cache directory "
          "(default bundle.cache_dir), replaced only once all of it is checked",
    "insecure": "skip TLS verification for non-loopback registries (loopback ones speak plain HTTP)",
})
@report_errors
def cache_pull(c, source, to=None, insecure=False):
    """Pull a bundle or binary cache artifact, every file checked against its digest; print where it went."""
    from ci import bundles

    bundle_to, cache_to = _path(c, to, c.bundle.output), _path(c, to, c.bundle.cache_dir)
    with files.output(bundle_to, "file-or-directory", "--to") as bundle_to, \
            files.output(cache_to, "file-or-directory", "--to") as cache_to:
        pulled = bundles.pull(source, bundle_to=bundle_to, cache_to=cache_to, insecure=insecure)
    say(pulled.artifact.pinned)
    say(f"{pulled.path} {pulled.kind}: {len(pulled.contents.narinfos)} paths, {pulled.contents.nar_bytes} bytes of NARs, "
        f"signed by {', '.join(pulled.contents.signers) or 'nobody'}")


ns = Collection(build_base, build_cache, build_web, verify_reproducible, run_web, stop_web, build_services, start, stop,
                push, sign_key, verify, sbom, extract, check_nix, workflows, lock,
                build_vm, cidata, run_vm, push_vm, pull_vm,
                bundle_key, bundle, build_runner, cache_push, cache_pull)
DEFAULTS = {
    "project": {
        "root": None,  # the build context; None: the directory of this file (nix-ci: the current directory)
    },
    "web": {
        "name": "web",  # the image name, as the images file sets it
        "attr": "web",  # the images file's attribute build-web builds
        "pkgs": "nix/nixpkgs",  # package set, relative to the project
        "images": "nix/images.nix",  # images file, relative to the project
        "container": "web",  # container name used by run-web and stop-web
        "host": "127.0.0.1",
        "port": 9000,
        "container_port": 8080,
        "timeout": 30,  # seconds run-web waits for an HTTP answer
    },
    "start": {
        # The runners `invoke start NAME` runs: `attr` of `file` (a derivation with bin/run) in the foreground, or
        # with --container the image `image` of the images file `images` (None: web.images), published on
        # `ports` (HOST:CONTAINER) of `host`. Files are relative to the project.
        "services": {
            "file": "nix/services.nix",
            "attr": "services-run",  # nginx and the status page under s6-svscan
            "images": "nix/services.nix",
            "image": "services",  # also the image's name: build-services tags services:<tag>
            "ports": ["9080:8080", "9081:8081"],  # nginx, status
            "container": "services",
            "host": "127.0.0.1",
            "timeout": 30,  # seconds start --container waits for every port to answer
        },
        "nginx": {
            "file": "nix/runner.nix",
            "attr": "run",  # the seed's nginx runner (see bundle)
            "images": None,
            "image": "web",  # as a container: the web image
            "ports": ["9090:8080"],
            "container": "nginx",
            "host": "127.0.0.1",
            "timeout": 30,
        },
    },
    "labels": {
        # OCI labels of every image built (ci/labels.py). source: the repository's URL; None: GitHub's
        # repository, else the git remote origin. licenses (SPDX) and version: of the images file's images.
        "source": None,
        "licenses": None,
        "version": None,
    },
    "signing": {
        # The cosign key pair (ci/tools/cosign.py). key: signs every push when set (as --sign-key); keep it out of
        # the repository; its passphrase comes from COSIGN_PASSWORD. public_key: when set, `verify` uses it and
        # every pull of a cache image, substituter or bundle must carry a valid signature by it.
        "key": None,
        "public_key": None,
    },
    "builder": {
        "image": None,  # None: the digest-pinned default of images/nix-base.Dockerfile
        "from_debian": False,  # make the builder from this machine's Debian packages
        "tool": "mmdebstrap",
        "suite": "trixie",  # the Debian release of the --from-debian builder: its Nix must evaluate the pinned nixpkgs
        "base": "nix-base:latest",
        "cache": "nix-cache:latest",
        "registry": None,  # namespace holding nix-cache, pulled when the local one is missing
        "max_age_days": 7,  # older caches still work, with a warning
    },
    "vm": {
        "ssh_keys": None,  # SSH public keys: a list, or one string with a key per line (INVOKE_VM_SSH_KEYS)
        "ssh_key_files": None,  # public key files: a list, or one ':'-separated string; keep them out of the repo
        "user": "nixos",  # the login user (wheel, sudo without password)
        "hostname": "nixos",
        "disk_size": "8192",  # MiB, or "auto" (just big enough); the root partition grows to the disk at boot
        "expression": "nix/vm.nix",  # the VM expression, relative to the project
        "image": "build/vm/nixos.qcow2",  # where build-vm writes and run-vm, push-vm read the image
        "seed": "build/vm/cidata.img",  # where cidata writes and run-vm, push-vm read the seed disk
        "seed_format": "vfat",  # or iso9660
        # The JSON schema cidata checks #cloud-config user-data against, relative to the project. None:
        # cloud-init's own where Debian's cloud-init package installs it; without it, only YAML and mapping checks.
        "cloud_config_schema": None,
        "host": "127.0.0.1",  # the address run-vm forwards SSH on
        "ssh_port": 2222,
        "memory": 2048,  # MiB
        "cpus": 2,
        "cpu": None,  # qemu -cpu model; None: host,-arch-capabilities with KVM, max without
    },
    "bundle": {
        "expression": "nix/runner.nix",  # what `bundle` builds, relative to the project
        "attr": "run",  # the attribute bundled: a package with bin/run for the runner image
        "output": "build/bundle/closure.tar",  # where bundle writes, and cache-push and cache-pull read and write, a bundle
        "cache_dir": "build/bundle/cache",  # where cache-pull writes a binary cache
        "compression": "zstd",  # NAR compression in bundles: zstd, xz, bzip2 or none
        "key_name": None,  # the name bundle-key gives a new key; None: <host name>-1
        "secret_key": "~/.config/nix-ci/bundle-key.sec",  # signs bundles; keep it out of the repository
        "public_key": "~/.config/nix-ci/bundle-key.pub",  # checks them: runner image, substituters
        "trusted_keys": None,  # more public keys to trust (NAME:KEY, space-separated, or a list)
        "runner_image": "nix-runner:latest",  # what build-runner tags
        "substituter": None,  # REGISTRY/NAME:TAG of a binary cache (or bundle) that build-web and build-cache substitute from
    },
    "remote": {
        # Nix remote builders for build-web, build-cache, bundle and build-vm (ci/remote.py), in Nix's builders
        # syntax, ';'-separated: "ssh-ng://USER@HOST[:PORT] SYSTEMS - MAX-JOBS SPEED FEATURES". None: build here.
        "builders": None,
        "ssh_key_file": None,  # their SSH private key; None: the NIX_CI_BUILDERS_SSH_KEY variable. Keep it out of the repo
        "known_hosts": None,  # a known_hosts file pinning their host keys (ssh-keyscan's lines), relative to the project
        "host_keys": None,  # known_hosts lines too: a list, or one string with a line per key
        "local_builds": True,  # False: max-jobs = 0, every derivation is built remotely (--remote-only)
        "fallback": False,  # when no builder answers: True builds here, False fails (--fallback-local)
        "network": None,  # the build container's network: None (the engine's default), or host (builders on loopback)
        "share": None,  # REGISTRY/NAME:TAG: build-web pushes the store paths it added there (--share), signed
    },
}
ns.configure(DEFAULTS)

# invoke reads the project's invoke.yaml and the INVOKE_* variables once this file is imported, and casts them with
# a traceback for a value it cannot take: every one is checked here first (ci/settings.py), flags as each task starts.
check_settings(DEFAULTS, HERE)
