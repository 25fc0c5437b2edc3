#!/usr/bin/env python3
"""Links a function binary in an optimised profile (`infra/link/cc`, the workspace's linker, runs this when
`infra/link/build.rs` set `JETFN_LINK_ORDER`): `cc` as rustc runs it, then a second link that puts the code start-up
and the hot path run first in `.text` and packs the relative relocations.

Why: a function's idle RSS was mostly its own code. The kernel maps a binary's pages 64 KiB at a time around each
one touched, and the 2 to 3 MB that start-up and an attempt run were spread over the whole 15 MB `.text`, so most of
it ended up resident; the loader also reads about 1 MB of relocations at every start. Placed together (lld's
`--symbol-ordering-file`) and packed (DT_RELR), they leave an idle welcome function at 9 to 10 MiB instead of 17 to
18 (`tests/bench/ANALYSIS.md`, section 26).

Which functions run is recorded by `infra/link/record.sh` into `infra/link/hot-functions.txt`, as demangled names
without crate hashes: a symbol's mangled name changes with the features and the profile a crate is built with (the
bench's build, the images' build), while its demangled v0 name (the workspace mangles with v0, which spells out
generic arguments) does not. So the first link makes the binary, `nm` reads its symbols, and those whose name is in
the list are ordered for the second. A name not found costs nothing but its place: a stale list makes a binary that
works and is only larger in memory, never a failed build; so does any error here (the first link's binary stays).
"""

import os
import re
import subprocess
import sys

CC = os.environ.get("JETFN_LINK_CC", "cc")
STRIP_ALL = ("-s", "-Wl,-s", "-Wl,--strip-all")


def output_path(args):
    """The `-o` argument, looked for in response files too (rustc passes one when the command line is long)."""
    expanded = []
    for arg in args:
        if arg.startswith("@") and os.path.isfile(arg[1:]):
            with open(arg[1:], encoding="utf-8") as file:
                expanded.extend(line.rstrip("\n").replace("\\ ", " ") for line in file)
        else:
            expanded.append(arg)
    for index, arg in enumerate(expanded[:-1]):
        if arg == "-o":
            return expanded[index + 1]
    return None


LLVM_SUFFIX = re.compile(r"\.llvm\.\d+$")
CRATE_HASH = re.compile(r"\[[0-9a-f]+\]")
CRATE_AT_END = re.compile(r"Cs[0-9A-Za-z]*_(\d+)([A-Za-z_][0-9A-Za-z_]*)$")
BACKREF_AT_END = re.compile(r"B([0-9A-Za-z]*)_$")
CRATE_AT = re.compile(r"C(?:s[0-9A-Za-z]*_)?(\d+)([A-Za-z_][0-9A-Za-z_]*)")
BASE62 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def instantiating_crate(name):
    """The crate a v0 symbol names as the one that instantiated a generic (the suffix after its path), which the
    demangled text leaves out: `drop_in_place::<io::Error>` is compiled once per crate that needs it, and only the
    copies start-up ran should be placed first."""
    start = name.rfind("Cs")
    while start > 1:
        found = CRATE_AT_END.match(name, start)
        if found and len(found.group(2)) == int(found.group(1)):
            return found.group(2)
        start = name.rfind("Cs", 0, start)
    found = BACKREF_AT_END.search(name)
    if found:
        offset = 0
        if found.group(1):
            for digit in found.group(1):
                offset = offset * 62 + BASE62.index(digit)
                if offset > len(name):
                    return None
            offset += 1
        crate = CRATE_AT.match(name, 2 + offset)
        if crate and len(crate.group(2)) >= int(crate.group(1)):
            return crate.group(2)[: int(crate.group(1))]
    return None


def keys(symbols):
    """Each symbol's name as the list spells it: v0 names demangled without their crate hashes, others as they are
    (C functions), both without the `.llvm.<n>` suffix ThinLTO adds to a promoted local."""
    bare = [LLVM_SUFFIX.sub("", symbol) for symbol in symbols]
    rust = [name for name in bare if name.startswith("_R")]
    demangled = {}
    if rust:
        out = subprocess.run(
            ["c++filt"], input="\n".join(rust) + "\n", capture_output=True, text=True, check=True
        ).stdout.splitlines()
        demangled = dict(zip(rust, out))
    out = []
    for name in bare:
        key = CRATE_HASH.sub("", demangled.get(name, name))
        crate = instantiating_crate(name) if name in demangled else None
        out.append(f"{key} @{crate}" if crate else key)
    return out


def text_symbols(binary):
    listing = subprocess.run(
        ["nm", "--defined-only", "--format=posix", binary], capture_output=True, text=True, check=True
    ).stdout
    symbols = []
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1] in ("t", "T", "W", "w"):
            symbols.append(fields[0])
    return symbols


def record(runs):
    """For `record.sh`: `runs` is a list of (binary, start-up dump, later dump) from callgrind runs of functions. The
    keys of the functions each binary ran, every binary's start-up first, then what each ran later; within a dump in
    the order callgrind lists them."""
    keys_seen = {}
    present = {run[0]: set(text_symbols(run[0])) for run in runs}
    for phase in (1, 2):
        for run in runs:
            names = []
            seen = set()
            with open(run[phase], encoding="utf-8", errors="replace") as file:
                for line in file:
                    if line.startswith(("fn=", "cfn=")):
                        name = re.sub(r"'\d+$", "", line.split("=", 1)[1].strip())
                        if name in present[run[0]] and name not in seen:
                            seen.add(name)
                            names.append(name)
            keys_seen.update(dict.fromkeys(keys(names)))
    sys.stdout.writelines(key + "\n" for key in keys_seen)
    return 0


def count(listing, binaries):
    """For `record.sh`: how many of the list's names each binary holds, as the images test reads them back."""
    with open(listing, encoding="utf-8") as file:
        wanted = {line.rstrip("\n") for line in file if line.strip() and not line.startswith("#")}
    for binary in binaries:
        symbols = text_symbols(binary)
        found = len(wanted.intersection(keys(symbols)))
        print(f"# matched {os.path.basename(binary)} {found}")
    return 0


def main():
    args = sys.argv[1:]
    if args[:1] == ["--count"]:
        return count(args[1], args[2:])
    if args[:1] == ["--keys-of-callgrind"]:
        runs = args[1:]
        return record([tuple(runs[at : at + 3]) for at in range(0, len(runs) - 2, 3)])
    listing = os.environ.get("JETFN_LINK_ORDER")
    output = output_path(args)
    if not listing or output is None or not os.path.isfile(listing):
        os.execvp(CC, [CC, *args])
    # The first link keeps the symbol table even where the profile strips it (the images), for `nm` to read.
    first = subprocess.run([CC, *[arg for arg in args if arg not in STRIP_ALL]])
    if first.returncode != 0:
        return first.returncode
    try:
        extra = order(listing, output)
    except Exception as error:  # noqa: BLE001: the first link made a working binary; keep it
        with open(output + ".link-order-stats", "w", encoding="utf-8") as file:
            file.write(f"not ordered: {error!r}\n")
        return 0
    if subprocess.run([CC, *args, *extra]).returncode == 0:
        return 0
    with open(output + ".link-order-stats", "a", encoding="utf-8") as file:
        file.write("not ordered: the ordered link failed; linked as it is\n")
    return subprocess.run([CC, *args]).returncode


def order(listing, output):
    """Writes the symbol ordering file for the binary the first link made; returns the linker arguments using it."""
    with open(listing, encoding="utf-8") as file:
        wanted = [line.rstrip("\n") for line in file if line.strip() and not line.startswith("#")]
    rank = {name: position for position, name in enumerate(wanted)}
    symbols = text_symbols(output)
    ordered = sorted((rank[key], symbol) for symbol, key in zip(symbols, keys(symbols)) if key in rank)
    order_file = output + ".link-order"
    with open(order_file, "w", encoding="utf-8") as file:
        file.writelines(symbol + "\n" for _, symbol in ordered)
    found = len({position for position, _ in ordered})
    # Kept beside the binary, for `infra/link/record.sh --check` and for a reader asking how well the list matched.
    with open(output + ".link-order-stats", "w", encoding="utf-8") as file:
        file.write(f"listed {len(wanted)} found {found} symbols {len(ordered)} relr {glibc_has_relr()}\n")
    extra = [f"-Wl,--symbol-ordering-file={order_file}", "-Wl,--no-warn-symbol-ordering"]
    if glibc_has_relr():
        # The loader reads every relocation at start; a PIE binary's are nearly all relative, and packed (DT_RELR)
        # they take some KB instead of about 1 MB of pages read and kept (ANALYSIS.md, section 26).
        extra.append("-Wl,-z,pack-relative-relocs")
    return extra


def glibc_has_relr():
    """DT_RELR needs glibc 2.36 to load; the binary runs on this host's glibc or on one copied from it (the images)."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        return name == "glibc" and tuple(int(part) for part in version.split(".")[:2]) >= (2, 36)
    except (ValueError, OSError, AttributeError):
        return False


if __name__ == "__main__":
    sys.exit(main())
