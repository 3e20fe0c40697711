# Supervised services with s6: a declaration of services becomes an s6 scan
# directory, a runner that starts s6-svscan on a copy of it, and a nix-shell
# that offers that runner. Everything that runs is execline and busybox: no
# bash, no coreutils.
#
#   s6 = import ./s6.nix { inherit pkgs; };
#   s6.runner {
#     name = "services";
#     services = [
#       { name = "web"; run = [ "${pkgs.busybox}/bin/httpd" "-f" "-p" "8080" ]; log = true; }
#       { name = "dummy"; run = "foreground { echo starting } sleep 60"; }
#     ];
#   }
#
# A service is an attribute set:
#   name         required; letters, digits and - _ ., not starting with - or .,
#                at most 64 characters; unique in the declaration (it goes into
#                store path names, where Nix refuses @, spaces and the like)
#   run          required; what s6-supervise starts, and restarts when it dies:
#                  a string     an execline script (the text after the #! line,
#                               run with execlineb -P)
#                  a list       a command line: the program and its arguments
#                  a derivation or a path: an executable, run with no arguments
#   finish       optional; run after each death of `run` (s6 kills it after 5 s):
#                  a string     execline run with execlineb -S3: $1 is run's exit
#                               code (256 if killed), $2 the signal, $3 the name
#                  a list       a command line, run as it is
#                  a derivation or a path: an executable, given the three arguments
#   log          optional, default false: `run`'s output (stdout and stderr) goes
#                where s6-svscan's goes: the terminal, or `docker logs`
#                  true         a logger service (s6-log) that prefixes each line
#                               of stdout and stderr with "<name>: " and writes it
#                               to s6-svscan's stdout
#                  { timestamps = true; }   the same, each line also timestamped
#                  { run = ...; }           another logger: reads the lines on its
#                               stdin; a string, list or program as for `run`
#   timeoutKill  optional, milliseconds, default 3000: how long a service may take
#                to stop after SIGTERM before it gets SIGKILL (0: wait forever).
#                With s6's 5 s for a finish script, every service is down within
#                the 10 s `docker stop` gives by default.
#
# Bad declarations are refused when they are evaluated, with a message naming
# the service: a bad name, no run command, two services with the same name,
# an unknown attribute (a typo such as `fnish`).
{
  # Package set: s6, execline, busybox, runCommand, writeScript, writeTextFile
  # and mkShell are used (the pinned nixpkgs, or the test stand-in).
  pkgs
}:

let
  inherit (builtins) all attrNames concatMap concatStringsSep elem elemAt filter foldl' genList head
    isAttrs isBool isInt isList isPath isString length match replaceStrings stringLength toString;

  el = "${pkgs.execline}/bin";
  s6 = "${pkgs.s6}/bin";
  bb = "${pkgs.busybox}/bin";

  # The PATH every script runs with: execline's programs (if, foreground, ...)
  # are looked up there, and services find s6 and busybox tools.
  path = "${el}:${s6}:${bb}";

  # One execline word: a quoted string, whatever it holds.
  quote = word: "\"" + replaceStrings [ "\\" "\"" ] [ "\\\\" "\\\"" ] word + "\"";

  isDerivation = x: isAttrs x && (x.type or null) == "derivation";
  isProgram = x: isDerivation x || isPath x;

  # What a run, finish or logger command is, or null when it is none of them.
  kindOf = command:
    if isString command then (if match "[[:space:]]*" command != null then null else "text")
    else if isList command then (if command != [ ] && all isString command then "argv" else null)
    else if isProgram command then "program"
    else null;

  # Service and scan directory names go into store path names (name-run,
  # name-scandir, ...). Nix allows only letters, digits and + - . _ ? = there
  # (so no @: getty@tty1-run is not a store path); + ? = are refused too, as
  # the build script uses names as bare shell words and ? is a wildcard there.
  nameRule = "letters, digits and - _ ., not starting with - or ., at most 64 characters";
  validName = name: isString name && stringLength name <= 64
    && match "[A-Za-z0-9_][A-Za-z0-9_.-]*" name != null;

  knownAttributes = [ "name" "run" "finish" "log" "timeoutKill" ];
  knownLogAttributes = [ "run" "timestamps" ];

  describe = index: service:
    if isAttrs service && isString (service.name or null) then "service '${service.name}'"
    else "service #${toString (index + 1)}";

  # Every problem of one service, as messages naming it.
  problems = index: service:
    let
      it = describe index service;
      unknown = filter (a: !(elem a knownAttributes)) (attrNames service);
      log = service.log or false;
    in
    if !isAttrs service then [ "${it} is not an attribute set { name = ...; run = ...; }" ]
    else
      (if !(service ? name) then [ "${it} has no name" ]
       else if !validName service.name then
         [ "service name ${if isString service.name then "'${service.name}'" else "of ${it}"} is invalid: use ${nameRule}" ]
       else [ ])
      ++ map (a: "${it} has an unknown attribute '${a}' (known: ${concatStringsSep ", " knownAttributes})") unknown
      ++ (if elem (service.run or null) [ null "" [ ] ] then [ "${it} has no run command" ]
          else if kindOf service.run == null then
            [ "${it}: run must be execline text, a list of words (a command line) or a program (a derivation or a path)" ]
          else [ ])
      ++ (if (service.finish or null) != null && kindOf service.finish == null then
            [ "${it}: finish must be execline text, a list of words or a program" ]
          else [ ])
      ++ (if isBool log || log == null then [ ]
          else if !isAttrs log then [ "${it}: log must be true, false or { run = ...; } / { timestamps = true; }" ]
          else
            map (a: "${it}: log has an unknown attribute '${a}' (known: ${concatStringsSep ", " knownLogAttributes})")
              (filter (a: !(elem a knownLogAttributes)) (attrNames log))
            ++ (if log ? run && kindOf log.run == null then [ "${it}: log.run must be execline text, a list of words or a program" ] else [ ])
            ++ (if log ? timestamps && !isBool log.timestamps then [ "${it}: log.timestamps must be true or false" ] else [ ]))
      ++ (if service ? timeoutKill && !(isInt service.timeoutKill && service.timeoutKill >= 0) then
            [ "${it}: timeoutKill must be a whole number of milliseconds, 0 or more" ]
          else [ ]);

  # Names given to more than one service, each once.
  duplicates = services:
    let
      names = map (s: s.name) (filter (s: isAttrs s && isString (s.name or null)) services);
      count = name: length (filter (n: n == name) names);
    in
    foldl' (seen: name: if count name > 1 && !(elem name seen) then seen ++ [ name ] else seen) [ ] names;

  # The declaration, or a throw with its first problem.
  checked = { name, services, finish }@declaration:
    let
      found =
        if !isList services then [ "services must be a list of services, each { name = ...; run = ...; }" ]
        else if services == [ ] then [ "no services declared" ]
        else concatMap (i: problems i (elemAt services i)) (genList (i: i) (length services))
          ++ map (name: "two services are named '${name}'") (duplicates services)
          ++ (if finish != null && kindOf finish == null then [ "finish must be execline text, a list of words or a program" ] else [ ]);
    in
    if !validName name then throw "s6 services: the scan directory name '${toString name}' is invalid: use ${nameRule}"
    else if found != [ ] then throw "s6 services (${name}): ${head found}"
    else declaration;

  # The words that run `command`.
  commandLine = command:
    let kind = kindOf command; in
    if kind == "text" then command
    else if kind == "argv" then concatStringsSep " " (map quote command)
    else quote "${command}";

  execline = name: flags: body: pkgs.writeScript name ''
    #!${el}/execlineb ${flags}
    ${body}
  '';

  # service/run: stderr joins stdout when a logger reads it.
  runScript = service: execline "${service.name}-run" "-P" ''
    ${if logged service then "${el}/fdmove -c 2 1" else ""}
    ${commandLine service.run}
  '';

  finishScript = service:
    let kind = kindOf service.finish; in
    if kind == "argv" then execline "${service.name}-finish" "-P" (commandLine service.finish)
    else if kind == "text" then execline "${service.name}-finish" "-S3" service.finish
    else execline "${service.name}-finish" "-S3" "${quote "${service.finish}"} $1 $2 $3";

  logged = service: (service.log or false) != false && (service.log or null) != null;

  # service/log/run: the given logger, or s6-log writing prefixed lines to stdout.
  logScript = service:
    let log = if isAttrs service.log then service.log else { }; in
    execline "${service.name}-log" "-P" (
      if log ? run then commandLine log.run
      else "${s6}/s6-log -b -- ${quote "p${service.name}:"} ${if log.timestamps or false then "T" else ""} 1"
    );

  # Everything s6-svscan finds in the scan directory.
  scanDirectory = { name, services, finish ? null }:
    let
      svscanFinish = execline "${name}-svscan-finish" "-P" ''
        ${if finish == null then "" else "${el}/foreground { ${commandLine finish} }"}
        ${el}/foreground { ${el}/importas -i dir SERVICES_SCANDIR ${bb}/rm -rf ''${dir} }
        ${el}/foreground { ${el}/fdmove -c 1 2 ${bb}/echo ${quote "${name}: every service is down"} }
        ${el}/exit 0
      '';
      svscanCrash = execline "${name}-svscan-crash" "-P" ''
        ${el}/foreground { ${el}/fdmove -c 1 2 ${bb}/echo ${quote "${name}: s6-svscan crashed; stopping"} }
        ${el}/exit 111
      '';
      readme = pkgs.writeText "README" ''
        The scan directory of ${name}, made by nix/s6.nix: one directory per
        service (run, finish, log/run), and .s6-svscan/finish and crash.
        Services: ${concatStringsSep " " (map (s: s.name) services)}
      '';
      lines = concatMap (s: [
        "mkdir $out/${s.name}"
        "cp ${runScript s} $out/${s.name}/run"
        "echo ${toString (s.timeoutKill or 3000)} > $out/${s.name}/timeout-kill"
      ] ++ (if (s.finish or null) != null then [ "cp ${finishScript s} $out/${s.name}/finish" ] else [ ])
        ++ (if logged s then [ "mkdir $out/${s.name}/log" "cp ${logScript s} $out/${s.name}/log/run" ] else [ ]))
        services;
    in
    pkgs.runCommand "${name}-scandir" { } ''
      mkdir -p $out/.s6-svscan
      cp ${svscanFinish} $out/.s6-svscan/finish
      cp ${svscanCrash} $out/.s6-svscan/crash
      cp ${readme} $out/README
      ${concatStringsSep "\n" lines}
    '';

  # A line on stderr, then exit 100 (after `export PATH`).
  fail = message: "foreground { fdmove -c 1 2 echo ${quote message} } exit 100";

  # See `runner` below.
  runnerOf = { name, services, finish ? null }:
    let
      scanDir = scanDirectory { inherit name services finish; };
      run = pkgs.writeTextFile {
        name = "${name}-run";
        destination = "/bin/run";
        executable = true;
        text = ''
          #!${el}/execlineb -S0
          # run [DIR]: copies the scan directory
          #   ${scanDir}
          # to DIR, then becomes s6-svscan on it. DIR may be absent, empty, or
          # a scan directory that no s6-svscan runs on any more (left by a run
          # that was killed: it is emptied); by default it is a new directory
          # under $TMPDIR or /tmp. .s6-svscan/finish removes it once every
          # service is down. Services find it in $SERVICES_SCANDIR.

          # (export runs the next program from the PATH it was given: absolute.)
          ${el}/export PATH ${quote path}
          ${el}/importas -D /tmp tmp TMPDIR
          backtick -E dir {
            ifelse { eltest ''${#} -eq 0 } { mktemp -d ${quote "\${tmp}/${name}.XXXXXX"} }
            ifelse { redirfd -w 2 /dev/null s6-svscanctl -z ''${1} } {
              ${fail "${name}: s6-svscan already runs on \${1}"}
            }
            ifelse { eltest -d ''${1}/.s6-svscan } {
              foreground { fdmove -c 1 2 echo ${quote "${name}: emptying \${1}, left by an earlier run"} }
              if { find ''${1} -mindepth 1 -maxdepth 1 -exec rm -rf "{}" "+" }
              realpath ''${1}
            }
            ifelse { eltest -e ''${1} } {
              backtick -E entries { ls -A ''${1} }
              ifelse { eltest -n ''${entries} } {
                ${fail "${name}: \${1} is neither empty nor a scan directory; give a new or empty directory"}
              }
              realpath ''${1}
            }
            if { mkdir -p ''${1} }
            realpath ''${1}
          }
          if { cp -R ${scanDir}/. ''${dir} }
          if { chmod -R u+w ''${dir} }
          export SERVICES_SCANDIR ''${dir}
          foreground {
            fdmove -c 1 2 echo ${quote "${name}: s6-svscan on \${dir}: ${concatStringsSep " " (map (s: s.name) services)}"}
          }
          s6-svscan ''${dir}
        '';
      };
    in
    run // { inherit scanDir services; scanName = name; };
in
{
  # The PATH of every service: execline, s6 and busybox.
  inherit path;

  # scanDir { name ? "services"; services; finish ? null; }: the scan directory,
  # in the store (read-only; s6 needs it writable: the runner copies it).
  # `finish`: a string, list or program run once every service is down.
  scanDir = { name ? "services", services, finish ? null }:
    scanDirectory (checked { inherit name services finish; });

  # runner { name ? "services"; services; finish ? null; }: a derivation with
  # bin/run, which starts s6-svscan on a fresh copy of the scan directory, in
  # the foreground (as PID 1 in a container). `run DIR` puts the copy in DIR;
  # services find it in $SERVICES_SCANDIR (s6-svstat $SERVICES_SCANDIR/name).
  # Stops on SIGTERM or SIGINT once every service is down, exit code 0.
  # Its attributes: scanDir, services, scanName.
  runner = { name ? "services", services, finish ? null }:
    runnerOf (checked { inherit name services finish; });

  # shell { runner, packages ? [ ] }: a nix-shell environment with the runner
  # (`run`), busybox, execline and s6 on PATH.
  shell = { runner, packages ? [ ] }: pkgs.mkShell {
    name = "${runner.scanName or runner.name}-shell";
    packages = [ runner pkgs.busybox pkgs.execline pkgs.s6 ] ++ packages;
  };

  # statusService { name ? "status"; port; services; }: a service answering
  # HTTP on `port` with the s6-svstat line of each of `services` (names):
  #   nginx: up (pid 12) 42 seconds
  # busybox httpd runs it as a CGI (busybox httpd runs cgi-bin/index.cgi for
  # "/" when there is no index.html).
  statusService = { name ? "status", port, services }:
    let
      root = pkgs.runCommand "${name}-root" {
        cgi = execline "index.cgi" "-P" ''
          ${el}/importas -i dir SERVICES_SCANDIR
          ${el}/foreground { ${bb}/printf "Content-Type: text/plain\r\n\r\n" }
          ${el}/forx -E service { ${concatStringsSep " " (map quote services)} }
          ${el}/foreground { ${bb}/printf "%s: " ''${service} }
          ${s6}/s6-svstat ''${dir}/''${service}
        '';
      } ''
        mkdir -p $out/cgi-bin
        cp $cgi $out/cgi-bin/index.cgi
      '';
    in
    {
      inherit name;
      run = [ "${bb}/httpd" "-f" "-v" "-p" (toString port) "-h" "${root}" ];
      log = true;
    };
}
