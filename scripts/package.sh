#!/bin/bash
# Debian packages of roomy-agent, roomy-controller and roomyctl:
#
#   scripts/package.sh [OUTDIR]        (default target/debian)
#
# Builds the three binaries with the release profile and no test features
# (cargo-deb strips them), makes what the packages carry beside them from those very
# binaries (man pages and completions from their clap definitions, so they
# never drift from --help; the systemd units of deploy/systemd with the
# packaged /usr/bin paths), runs cargo-deb for each package (metadata in
# each crate's Cargo.toml) and lintian, which must report no errors.
# Needs cargo-deb and lintian (tests/vm/install-deps.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "package.sh: $*" >&2; exit 1; }
command -v cargo-deb >/dev/null || die "cargo-deb not found: run tests/vm/install-deps.sh (or cargo install --locked cargo-deb)"
command -v lintian >/dev/null || die "lintian not found: run tests/vm/install-deps.sh (or apt-get install lintian)"

out=$(realpath -m -- "${1:-target/debian}")
# The same build cache and profile as scripts/test.sh: only the crates whose
# features differ (the agent without failpoints) are compiled again, once;
# both builds' artifacts stay in the cache side by side, so switching back
# and forth compiles nothing. (A profile of its own would compile every
# dependency again: minutes on a fresh machine.)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${ROOMY_BUILD_CACHE:-/var/cache/roomy-build}/target}
cargo build --release -p roomy-agent -p roomy-controller -p roomyctl
bin=$CARGO_TARGET_DIR/release

# Generated assets, at the paths the crates' [package.metadata.deb] name.
assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets"/{man1,man8,units,completions}
"$bin/roomyctl" man --dir "$assets/man1" >/dev/null
"$bin/roomy-agent" --man >"$assets/man8/roomy-agent.8"
"$bin/roomy-controller" --man >"$assets/man8/roomy-controller.8"
# -n: no name or timestamp in the header, so the same page gives the same bytes.
gzip -9n "$assets"/man1/*.1 "$assets"/man8/*.8
"$bin/roomyctl" completions bash >"$assets/completions/roomyctl"
"$bin/roomyctl" completions zsh >"$assets/completions/_roomyctl"
"$bin/roomyctl" completions fish >"$assets/completions/roomyctl.fish"
# The units are written for a source install (/usr/local/bin); the package
# puts the binaries in /usr/bin and has no use for the copy-it-yourself
# comment.
for unit in roomy-agent roomy-controller; do
    sed -e 's|/usr/local/bin/|/usr/bin/|g' -e '/^# Install:/,/^# *systemctl daemon-reload/d' \
        "deploy/systemd/$unit.service" >"$assets/units/$unit.service"
    grep -q '^ExecStart=/usr/bin/' "$assets/units/$unit.service" || die "$unit.service: no ExecStart=/usr/bin/ after rewriting"
done

mkdir -p "$out"
debs=()
for pkg in roomy-agent roomy-controller roomyctl; do
    # --no-build: the binaries above, no feature of the tests in them;
    # --strip: the release profile keeps line tables, a package does not.
    # Its warning that the generated assets are not under target/release/ is
    # expected (they are made above, not by cargo) and filtered.
    deb=$(cargo deb --no-build --strip -p "$pkg" -o "$out" 2> >(grep -v 'Only source paths starting with' >&2) | tail -n 1)
    [[ -f $deb ]] || die "cargo deb -p $pkg printed no package path (got '$deb')"
    debs+=("$deb")
done

# Errors fail the build; warnings are printed for whoever reads the log.
lintian --fail-on error --tag-display-limit 0 "${debs[@]}" >&2 || die "lintian reported errors (above)"
printf '%s\n' "${debs[@]}"
