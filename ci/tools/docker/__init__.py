"""The Docker engine, through the docker SDK, split by what it handles, as
docker-py's own API is: the client (client), builds that outlive the engine
(engine_stops), images (images), classic builds (build), images streamed into
the engine (streaming), containers (containers), and the docker-archive format
(archive). Callers use the names below: `docker.build(...)`, `docker.Image`.
"""

from .build import build
from .client import LABEL, client
from .containers import (
    Finished,
    OneOffContainer,
    container_logs,
    container_state,
    one_off_container,
    remove_container,
    run_detached,
)
from .engine_stops import needs_engine, sweep
from .images import (
    EPOCH,
    Image,
    engine_architecture,
    import_rootfs,
    inspect_image,
    known_chains,
    load,
    normalised,
    pull,
    remove_image,
    require_image,
    saved,
    tag,
    untag,
)
from .streaming import context_archive, stream_into_load

__all__ = [
    "EPOCH", "LABEL", "Finished", "Image", "OneOffContainer", "build", "client", "container_logs", "container_state",
    "context_archive", "engine_architecture", "import_rootfs", "inspect_image", "known_chains", "load", "needs_engine",
    "normalised", "one_off_container", "pull", "remove_container", "remove_image", "require_image", "run_detached",
    "saved", "stream_into_load", "sweep", "tag", "untag",
]
