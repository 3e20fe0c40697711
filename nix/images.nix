# Container images built with the dockerTools of the pinned nixpkgs.
#
# Build each attribute by hand, from the repository root:
#
#   web      nix-build nix/images.nix -A web && ./result | docker load
#            The result is a script that streams the image tarball to stdout;
#            no tarball is written to the Nix store. Pick the tag with
#            `--argstr tag dev`; without it the tag is the output hash.
#            Another page: `--arg page ./some/page.html`.
#   web-cmd  nix-build nix/images.nix -A web-cmd
#            Just the nginx start script, to inspect or run outside a container
#            (./result starts nginx in the foreground on port 8080).
#
# Nothing here needs KVM (no runAsRoot) or root: the nginx user comes from
# fakeNss, and file ownership is set under fakeroot.
{ pkgs ? import ./nixpkgs {}      # package set (pinned nixpkgs)
, page ? ./web/index.html         # the page nginx serves
, tag ? null                      # image tag; null derives it from the output hash
  # OCI labels as a JSON object: where the image comes from (source, and
  # licenses and version when known). The toolkit passes them
  # (`--argstr labels`); title and description come from here.
, labels ? "{}"
}:
let
  # The unprivileged user and group nginx runs as, and the port it listens on.
  # 101 is what the official nginx images use, so volumes prepared for them
  # keep working. Ports above 1023 need no privilege to bind.
  uid = 101;
  gid = 101;
  port = 8080;

  # `page` copied into the store under a fixed name. A path (./x.html) or an
  # absolute path given as a string (--argstr page /abs/x.html) is imported as
  # is; a derivation or a store path string is used directly.
  pageFile =
    if builtins.isPath page || (builtins.isString page && !builtins.hasContext page)
    then builtins.path { path = page; name = "index.html"; }
    else page;

  # The web root: its own small store path holding only index.html. Each store
  # path of this closure gets its own image layer (see maxLayers), so editing
  # the page changes a layer of a few bytes (and those of the paths that name
  # it: nginx.conf, web-cmd) and leaves the nginx, glibc, openssl... layers as
  # they were.
  webRoot = pkgs.runCommand "web-root" { } ''
    mkdir -p $out
    cp ${pageFile} $out/index.html
    chmod 0444 $out/index.html
  '';

  # nginx configuration for an unprivileged master process: no `user`
  # directive (it only applies when the master starts as root), everything
  # nginx writes (pid file, temporary files) goes under /tmp, logs go to the
  # container's stdout and stderr.
  nginxConf = pkgs.writeText "nginx.conf" ''
    daemon off;
    worker_processes auto;
    pid /tmp/nginx.pid;
    error_log /dev/stderr notice;

    events {
      worker_connections 1024;
    }

    http {
      include ${pkgs.nginx}/conf/mime.types;
      default_type application/octet-stream;
      access_log /dev/stdout;
      server_tokens off;

      client_body_temp_path /tmp/nginx_client_body;
      proxy_temp_path /tmp/nginx_proxy;
      fastcgi_temp_path /tmp/nginx_fastcgi;
      uwsgi_temp_path /tmp/nginx_uwsgi;
      scgi_temp_path /tmp/nginx_scgi;

      server {
        listen ${toString port};
        root ${webRoot};
        index index.html;
        location / {
          try_files $uri $uri/ =404;
        }
      }
    }
  '';

  # /etc/passwd, /etc/group and /etc/nsswitch.conf with root, nobody and the
  # nginx user/group added (the manual's fakeNss.override form).
  nss = pkgs.dockerTools.fakeNss.override {
    extraPasswdLines = [ "nginx:x:${toString uid}:${toString gid}:nginx:/var/empty:/bin/false" ];
    extraGroupLines = [ "nginx:x:${toString gid}:" ];
  };
in
rec {
  # The nginx command: a script that execs nginx in the foreground with the
  # configuration above. `-e` sends the log nginx writes before it has read
  # its configuration to stderr too, instead of the compiled-in
  # /var/log/nginx/error.log.
  web-cmd = pkgs.writeShellScript "web-cmd" ''
    exec ${pkgs.nginx}/bin/nginx -e /dev/stderr -c ${nginxConf}
  '';

  # The nginx image. streamLayeredImage builds a script that streams the image
  # to stdout: the store layers, then a final layer with /etc from fakeNss and
  # the directories made below. Everything referenced by `config` (web-cmd,
  # hence nginx, its configuration and the web root) is added to the image
  # automatically. With this closure each store path is a layer of its own;
  # nixos-25.11 orders the store layers by the size of their closure, so that
  # each comes after the layers of what it depends on.
  web = pkgs.dockerTools.streamLayeredImage {
    name = "web";
    inherit tag;

    # The manual's default, written out: a fixed date keeps the image
    # reproducible ("now" would change the image id on every build).
    created = "1970-01-01T00:00:01Z";

    # Overlay filesystems stop at about 125-128 stacked layers (the manual's
    # default is 100). 70 leaves over 50 for images built FROM this one. One
    # goes to the final customisation layer; the rest bound the store layers.
    # nixos-25.11's default grouping (no layeringPipeline: auto-layer.py)
    # picks the largest store path (by NAR size) to lead a layer, then the
    # next largest, and so on; each other path shares a layer with those on
    # which exactly the same picked paths depend (those on which none of them
    # depends share one layer). It stops before there would be more than
    # 69 layers. This closure (nginx and its libraries, bash, glibc: a few
    # dozen paths) fits, so every path gets picked and keeps its own layer,
    # and layers stay shared between images. Past 69 paths the big ones would
    # keep layers of their own, and the small leaves that nothing picked
    # depends on (web root, config, web-cmd) would share one layer.
    maxLayers = 70;

    contents = [ nss ];

    # Runs in the final layer's root as the unprivileged build user.
    extraCommands = ''
      mkdir -p tmp var/log/nginx var/cache/nginx
      chmod 1777 tmp
    '';

    # Runs under fakeroot in the same directory just before it is packed, so
    # these owners end up in the layer. The commands are dynamically linked
    # coreutils, which fakeroot handles; no chroot is needed (the manual asks
    # for enableFakechroot only for static binaries or scripts that must see
    # the image as /), and the relative paths work either way.
    fakeRootCommands = ''
      chown ${toString uid}:${toString gid} var/log/nginx var/cache/nginx
    '';
    enableFakechroot = false;

    config = {
      # No date or commit here: they would change the image at every commit.
      Labels = {
        "org.opencontainers.image.title" = "web";
        "org.opencontainers.image.description" = "nginx serving a static page, as an unprivileged user";
      } // builtins.fromJSON labels;
      User = "${toString uid}:${toString gid}";
      Cmd = [ "${web-cmd}" ];
      ExposedPorts."${toString port}/tcp" = { };
    };
  };
}
