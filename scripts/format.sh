#!/usr/bin/env bash
# clang-format (version 14, the style in .clang-format) over the repository's C++ files.
#   scripts/format.sh [paths...]           format in place every tracked *.hpp / *.cpp (under paths)
#   scripts/format.sh --check [paths...]   change nothing; list the files that would change and exit
#                                          1 if there are any (clang-format --dry-run --Werror)
# Installs clang-format when missing (scripts/install-deps.sh --format).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

check=0
if [[ ${1:-} == --check ]]; then
  check=1
  shift
fi
for arg in "$@"; do
  if [[ $arg == -* ]]; then
    echo "usage: $0 [--check] [paths...]" >&2
    exit 2
  fi
done

bash scripts/install-deps.sh --format

# Debian's clang-format package is a link to clang-format-14; name 14 directly when it is there.
# Another version formats differently (and may not know an option of .clang-format).
cf=clang-format
command -v clang-format-14 >/dev/null && cf=clang-format-14
version=$("$cf" --version)
if [[ ! $version =~ version\ 14\. ]]; then
  echo "format.sh: warning: .clang-format is written for clang-format 14, this is: $version" >&2
fi

files=()
while IFS= read -r -d '' f; do files+=("$f"); done < <(git ls-files -z -- "${@:-.}" | grep -zE '\.(hpp|cpp)$' || true)
if ((${#files[@]} == 0)); then
  echo "format.sh: no tracked .hpp/.cpp files${*:+ under $*}" >&2
  exit 2
fi

if [[ $check == 0 ]]; then
  "$cf" -i --style=file "${files[@]}"
  exit 0
fi

# One file per call, so that every file that would change is named once.
unformatted=()
for f in "${files[@]}"; do
  if ! out=$("$cf" --dry-run --Werror --style=file "$f" 2>&1); then
    if [[ $out != *clang-format-violations* ]]; then  # not a formatting difference: a real error
      echo "format.sh: $cf failed on $f:" >&2
      echo "$out" >&2
      exit 2
    fi
    unformatted+=("$f")
  fi
done
if ((${#unformatted[@]})); then
  echo "format.sh: ${#unformatted[@]} of ${#files[@]} file(s) not formatted as .clang-format says:" >&2
  printf '  %s\n' "${unformatted[@]}" >&2
  echo "format.sh: run scripts/format.sh (in place), or clang-format --dry-run FILE to see where" >&2
  exit 1
fi
echo "format.sh: ${#files[@]} file(s) formatted"
