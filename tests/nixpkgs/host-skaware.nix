# A test stand-in for nixpkgs' s6 and execline: the building machine's
# Debian packages (s6, execline) copied into the store.
#
# Impure on purpose, like the skopeo and umoci stand-ins: nixpkgs builds s6
# and execline from source, which cannot be fetched here. The programs and
# the libraries they link (ldd: libskarnet, libexecline, libs6, libc and the
# dynamic loader) are imported at evaluation time, so their store paths change
# with the files. So is the machine's patchelf, with its libraries: it runs at
# build time through the imported loader, to point each program at the loader
# and libraries of its store copy. Nothing is read from the host while Nix
# builds, so the builds work in Nix's sandbox too. The copies then run
# anywhere, in an image with no /lib either.
#
# Debian builds s6 and execline with absolute paths compiled in: s6-svscan
# starts /usr/bin/s6-supervise, s6-svc runs /usr/bin/s6-svlisten1, s6-log
# runs /usr/lib/execline/bin/execlineb. `debianPaths` links those paths to the
# store copies; an image that runs this s6 needs it in its contents. (nixpkgs'
# s6 refers to its own store paths and needs nothing of the sort.)
#
# Needs, where Nix evaluates: the Debian packages s6, execline and patchelf (.ci/setup installs them; so does the builder image of
# `invoke build-base --from-debian`).
{
  # The platform to build for, as in nixpkgs.
  system
  # The stand-in's runCommand (default.nix).
, runCommand
}:

let
  inherit (builtins) any attrNames filter readDir stringLength substring;

  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;

  # Where Debian puts the libraries of this platform.
  multiarch = {
    x86_64-linux = "x86_64-linux-gnu";
    aarch64-linux = "aarch64-linux-gnu";
  }.${system} or (throw "s6 stand-in: no Debian library directory known for ${system}");

  # Import the files of `dir` whose names `keep` accepts (no subdirectory),
  # failing with a hint when the directory or its files are missing.
  fromHost = name: dir: keep:
    let
      found = if builtins.pathExists dir then filter keep (attrNames (readDir dir)) else [ ];
    in
    if found == [ ] then
      throw "s6 stand-in: nothing to import from ${toString dir}; install the Debian packages s6 and execline (apt-get install s6 execline patchelf)"
    else builtins.path {
      path = dir;
      name = "${name}-from-host";
      filter = path: type: type != "directory" && keep (baseNameOf path);
    };

  # The loader, libc and the skarnet libraries (every soname version), in
  # $out/lib: one store path that s6 and execline share.
  libraries = runCommand "skaware-libraries" {
    files = fromHost "skaware-libraries" (/usr/lib + "/${multiarch}") (name:
      name == "libc.so.6"
      || any (prefix: hasPrefix prefix name) [ "ld-linux" "libskarnet.so." "libexecline.so." "libs6.so." ]);
  } ''
    mkdir -p $out/lib
    cp -P $files/* $out/lib/
  '';

  # patchelf and what it links (C++ runtime, libm, libc, the loader), run as
  # `ld.so --library-path LIBS patchelf`: it needs no patching of its own.
  patchelf = fromHost "patchelf" /usr/bin (name: name == "patchelf");
  patchelfLibraries = fromHost "patchelf-libraries" (/usr/lib + "/${multiarch}") (name:
    any (prefix: hasPrefix prefix name) [ "ld-linux" "libc.so." "libm.so." "libstdc++.so." "libgcc_s.so." ]);

  # Copies the programs of `programs` into $out/bin, each pointed at the
  # loader and the libraries of `libraries`. DT_RPATH (--force-rpath) rather
  # than DT_RUNPATH: it also serves the libraries' own dependencies.
  relocated = name: programs: runCommand name { inherit libraries programs patchelf patchelfLibraries; } ''
    patchelf() {
      $patchelfLibraries/ld-linux* --library-path $patchelfLibraries $patchelf/patchelf "$@"
    }
    mkdir -p $out/bin
    for program in $programs/*; do
      target=$out/bin/$(basename $program)
      cp $program $target
      chmod u+w $target
      loader=$(patchelf --print-interpreter $target)
      patchelf --set-interpreter $libraries/lib/$(basename $loader) \
        --force-rpath --set-rpath $libraries/lib $target
      chmod 0555 $target
    done
  '';

  s6 = relocated "s6" (fromHost "s6-programs" /usr/bin (hasPrefix "s6-"));

  # Debian keeps execline's programs (cd, if, exec, ...) off PATH, in
  # /usr/lib/execline/bin; nixpkgs puts them in bin/, as here.
  execline = relocated "execline" (fromHost "execline-programs" /usr/lib/execline/bin (_: true));
in
{
  inherit s6 execline;

  # The absolute paths compiled into Debian's s6 and execline, as links to
  # their store copies: /usr/bin/s6-* and /usr/lib/execline/bin.
  debianPaths = runCommand "s6-debian-paths" { inherit s6 execline; } ''
    mkdir -p $out/usr/bin $out/usr/lib/execline
    for program in $s6/bin/*; do
      ln -s $program $out/usr/bin/
    done
    ln -s $execline/bin $out/usr/lib/execline/bin
  '';
}
