# Services supervised by s6 (the seed's second experiment, and its TODOs):
# nginx and a status page under s6-svscan, run the same way in the
# foreground, in a nix-shell, or as PID 1 of an image. nix/s6.nix turns the
# declarations below into the scan directory and its runner.
#
# Build each attribute by hand, from the repository root:
#
#   dummy-run       nix-build nix/services.nix -A dummy-run && ./result/bin/run
#                   The seed's example: a dummy service that says it starts,
#                   sleeps 60 s, says it exits (its finish script), and is
#                   started again. Ctrl-C brings it down and stops.
#   services-run    nix-build nix/services.nix -A services-run && ./result/bin/run
#                   nginx on port 8080 and the status page on 8081, in the
#                   foreground; every log line starts with its service's name.
#   services-shell  nix-shell --pure nix/services.nix -A services-shell --run run
#                   (or plain `nix-shell` at the root, through shell.nix): the
#                   runner as `run`, with busybox, execline and s6 on PATH.
#   services        nix-build nix/services.nix -A services && ./result | docker load
#                   The image: s6-svscan is PID 1 (user 101) and runs nginx
#                   and the status page; `docker stop` brings them down
#                   through s6 and the container exits 0; their logs are the
#                   container's. `invoke build-services` builds it like web.
#   web, web-cmd    Those of the images file, so that this file can stand
#                   wherever an images file does (the cache image builds them).
{ pkgs ? import ./nixpkgs {}      # package set (pinned nixpkgs)
, page ? ./web/index.html         # the page nginx serves
, tag ? null                      # image tag; null derives it from the output hash
  # OCI labels as a JSON object, passed by the toolkit (`--argstr labels`):
  # where the image comes from; title and description come from here.
, labels ? "{}"
  # The images file whose web-cmd is the nginx service (the tests give
  # theirs, where busybox httpd stands in for nginx).
, images ? import ./images.nix { inherit pkgs page tag; }
  # More store paths whose files are linked into the image's / (the tests'
  # s6, made by Debian, needs /usr/bin/s6-supervise).
, extraContents ? [ ]
}:
let
  s6 = import ./s6.nix { inherit pkgs; };

  # The user everything runs as in the image, as in the web image.
  uid = 101;
  gid = 101;

  # nginx in the foreground (images.nix: port 8080, access log on stdout,
  # errors on stderr), each line prefixed with "nginx: ".
  nginx = { name = "nginx"; run = images.web-cmd; log = true; };

  # The state of each service over HTTP on port 8081 (s6-svstat).
  status = s6.statusService { port = 8081; services = [ "nginx" "status" ]; };

  # The seed's dummy service, the s6 way: `run` execs into sleep, so that
  # bringing the service down stops the sleep itself, and the goodbye is the
  # finish script's.
  dummy = {
    name = "dummy";
    run = ''
      foreground { echo Dummy is starting... }
      sleep 60
    '';
    finish = "echo Dummy is exiting...";
  };

  # /etc/passwd and /etc/group of the image: root, the services' user, nobody.
  passwd = pkgs.writeTextDir "etc/passwd" ''
    root:x:0:0:root:/root:/bin/sh
    services:x:${toString uid}:${toString gid}:services:/var/empty:/bin/false
    nobody:x:65534:65534:nobody:/var/empty:/bin/false
  '';
  group = pkgs.writeTextDir "etc/group" ''
    root:x:0:
    services:x:${toString gid}:
    nogroup:x:65534:
  '';
in
rec {
  inherit (images) web web-cmd;

  dummy-run = s6.runner { name = "dummy"; services = [ dummy ]; };

  services-run = s6.runner { name = "services"; services = [ nginx status ]; };

  services-shell = s6.shell { runner = services-run; };

  # The image. s6-svscan runs as PID 1 on /run/services (a fixed place, for
  # `docker exec services s6-svstat /run/services/nginx`); SIGTERM from
  # `docker stop` makes it bring every service down (SIGTERM, then SIGKILL
  # after each service's timeoutKill), wait for their loggers to drain, and
  # exit 0 through .s6-svscan/finish.
  services = pkgs.dockerTools.streamLayeredImage {
    name = "services";
    inherit tag;
    created = "1970-01-01T00:00:01Z";
    # As in images.nix: at most 69 store layers, room for images built on it.
    # While this closure (nginx, s6, execline, busybox, the scripts) stays
    # under 69 paths, nixos-25.11's grouping gives each path its own layer.
    maxLayers = 70;

    contents = [ passwd group ] ++ extraContents;

    # Writable by the services' user without chown (so without fakeroot, and
    # the image builds as any build user): sticky and open to all, as /tmp.
    # /run holds the scan directory; the others are nginx's compiled-in ones.
    extraCommands = ''
      mkdir -p tmp run var/log/nginx var/cache/nginx
      chmod 1777 tmp run var/log/nginx var/cache/nginx
    '';

    config = {
      Labels = {
        "org.opencontainers.image.title" = "services";
        "org.opencontainers.image.description" = "nginx and a status page supervised by s6";
      } // builtins.fromJSON labels;
      User = "${toString uid}:${toString gid}";
      Cmd = [ "${services-run}/bin/run" "/run/services" ];
      # What the services run with, for `docker exec` too (sh, s6-svstat, ...).
      Env = [ "PATH=${s6.path}" ];
      ExposedPorts = {
        "8080/tcp" = { };
        "8081/tcp" = { };
      };
      WorkingDir = "/";
    };
  };
}
