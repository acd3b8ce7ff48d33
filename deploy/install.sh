#!/bin/sh
# Installs skiff on this machine: the binary, the config files (kept when present), the
# systemd units, shell completions and man pages; with --enable, starts the units named.
#
#   deploy/install.sh [--binary PATH] [--prefix DIR] [--root DIR] [--enable controller|agent]...
#
#   --binary PATH   the skiff binary to install (default: target/release/skiff of this checkout)
#   --prefix DIR    where the binary, completions and man pages go (default /usr/local)
#   --root DIR      install under DIR (packaging, tests): the units name PREFIX/bin/skiff
#                   as it will be seen from /, and no running system is touched
#   --enable UNIT   enable and start skiff-UNIT.service now (needs systemd running; repeatable)
#
# Run it again to upgrade: the binary, units, completions and man pages are replaced; the
# config files in /etc/skiff and the state in /var/lib/skiff are left as they are.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
binary="$here/../target/release/skiff"
prefix=/usr/local
root=
enable=
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --prefix) prefix="$2"; shift 2 ;;
    --root) root="$2"; shift 2 ;;
    --enable)
      case "$2" in controller|agent) enable="$enable $2" ;;
        *) echo "install.sh: --enable takes controller or agent, not '$2'" >&2; exit 2 ;; esac
      shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$binary" ] || { echo "install.sh: no skiff binary at $binary (cargo build --release, or --binary PATH)" >&2; exit 1; }
if [ -n "$enable" ] && [ -n "$root" ]; then
  echo "install.sh: --enable starts units on this machine; it cannot be used with --root" >&2; exit 2
fi

say() { echo "install.sh: $*"; }
# Replaces a file atomically (a running skiff keeps its old binary until restarted).
put() { # MODE SRC DEST
  mkdir -p "$(dirname "$3")"
  cp "$2" "$3.new" && chmod "$1" "$3.new" && mv -f "$3.new" "$3"
}

put 0755 "$binary" "$root$prefix/bin/skiff"
say "installed $root$prefix/bin/skiff"
skiff="$root$prefix/bin/skiff"

for f in controller agent; do
  dest="$root/etc/skiff/$f.toml"
  if [ -e "$dest" ]; then
    say "kept $dest"
  else
    put 0640 "$here/$f.toml" "$dest"
    say "installed $dest"
  fi
done
mkdir -p "$root/var/lib/skiff"
chmod 0700 "$root/var/lib/skiff"

for unit in "$here"/systemd/*.service; do
  dest="$root/etc/systemd/system/$(basename "$unit")"
  mkdir -p "$(dirname "$dest")"
  sed "s|/usr/local/bin/skiff|$prefix/bin/skiff|g" "$unit" > "$dest.new" && mv -f "$dest.new" "$dest"
  say "installed $dest"
done

share="$root$prefix/share"
mkdir -p "$share/bash-completion/completions" "$share/zsh/site-functions" "$share/fish/vendor_completions.d"
"$skiff" completion bash > "$share/bash-completion/completions/skiff"
"$skiff" completion zsh > "$share/zsh/site-functions/_skiff"
"$skiff" completion fish > "$share/fish/vendor_completions.d/skiff.fish"
say "installed completions for bash, zsh and fish under $share"
pages=$("$skiff" man "$share/man/man1" | wc -l)
say "installed $pages man pages in $share/man/man1 (man skiff)"

if [ -z "$root" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  for u in $enable; do
    systemctl enable --now "skiff-$u.service"
    say "enabled and started skiff-$u.service (journalctl -u skiff-$u -f)"
  done
elif [ -n "$enable" ]; then
  echo "install.sh: systemd is not running here; start skiff yourself (skiff controller -c /etc/skiff/controller.toml)" >&2
  exit 1
fi
