# The seed's first experiment: nginx serving a static site, packaged as one
# `run` script ($out/bin/run). `invoke bundle` copies its closure into a
# signed binary cache and tars that with the result link; the runner image
# (images/runner.Dockerfile) restores the bundle into its store at start and
# execs /result/bin/run.
#
# By hand, from the repository root:
#
#   run      nix-build nix/runner.nix -A run && ./result/bin/run
#            nginx in the foreground on port 8080; its logs are under
#            /tmp/logs and are also followed on stdout.
#   config   nix-build nix/runner.nix -A config
#            Just the nginx configuration, to read.
#
# Everything nginx writes (pid file, logs, temporary files) goes under /tmp,
# so it runs as any user, in any container with a writable /tmp.
{ pkgs ? import ./nixpkgs {}      # package set (pinned nixpkgs)
, site ? ./web                    # the site root: a directory of static files
, port ? 8080                     # the port nginx listens on
}:
let
  # The site in a store path of its own, named after what it is. A path
  # (./site) is imported as is; a derivation or a store path is used directly.
  siteRoot =
    if builtins.isPath site
    then builtins.path { path = site; name = "site"; }
    else site;

  # The seed's nginx.conf, for a master process in the foreground: logs and
  # temporary paths under /tmp (the prefix given with -p), one server on
  # `port` serving the site root.
  config = pkgs.writeText "nginx.conf" ''
    daemon off;
    worker_processes auto;
    pid /tmp/nginx.pid;
    error_log /tmp/logs/error.log;

    events {
      worker_connections 768;
    }

    http {
      include ${pkgs.nginx}/conf/mime.types;
      default_type text/plain;

      access_log /tmp/logs/access.log;
      error_log  /tmp/logs/error.log;

      client_body_temp_path /tmp/nginx-client-body-temp;
      proxy_temp_path       /tmp/nginx-proxy-temp;
      fastcgi_temp_path     /tmp/nginx-fastcgi-temp;
      uwsgi_temp_path       /tmp/nginx-uwsgi-temp;
      scgi_temp_path        /tmp/nginx-scgi-temp;

      server {
        listen ${toString port};
        root ${siteRoot};
        index index.html;
      }
    }
  '';
in
{
  inherit config;

  # The start script. The log files are made empty, followed on stdout (so
  # `docker logs` shows them), and nginx replaces the shell: the container
  # lives exactly as long as nginx, and a stop signal reaches it.
  run = pkgs.writeShellScriptBin "run" ''
    echo "nginx on port ${toString port}, serving ${siteRoot}"
    ${pkgs.coreutils}/bin/mkdir -p /tmp/logs
    : > /tmp/logs/access.log
    : > /tmp/logs/error.log
    ${pkgs.coreutils}/bin/tail -n 0 -F /tmp/logs/access.log /tmp/logs/error.log &
    exec ${pkgs.nginx}/bin/nginx -p /tmp/ -e /tmp/logs/error.log -c ${config}
  '';
}
