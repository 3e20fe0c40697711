"""The tools the toolkit drives, one module per tool: the Docker engine
(docker/, through its SDK), skopeo, umoci, nix, oras (OCI artifacts, through
oras-py), qemu, and the filesystem writers fat and iso; and registry, which
turns any registry's answer into the toolkit's errors. They run processes
through ci.core.process and know nothing of the tasks."""
