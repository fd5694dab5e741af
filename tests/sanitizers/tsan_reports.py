"""Sorts ThreadSanitizer reports (files written by TSAN_OPTIONS=log_path) for make test-tsan.

    tsan_reports.py REPORT_DIR SOURCE_DIR

A report counts against the project when any access it names was made by the project's
own code (SOURCE_DIR/server, clients, tests): the innermost frame of the access's stack
outside the C++ standard library's and Abseil's inline headers (which run on behalf of
their caller) is there. Those are printed in full and the exit status is 1. In the others
every access was made by code of uninstrumented libraries (gRPC, protobuf, LibTorch,
OpenCV) or their inline headers and generated code, whose synchronisation TSan cannot see;
they are counted by where they are, and kept in REPORT_DIR.
"""
import collections
import os
import re
import sys

FRAME = re.compile(r"^\s+#\d+ .*? (\S+?):\d+(?::\d+)? \(|^\s+#\d+ .*? \((\S+?)\+0x[0-9a-f]+\)")
ACCESS = re.compile(r"^  (Previous )?(atomic )?(read|write)", re.IGNORECASE)
ON_BEHALF_OF_CALLER = ("/usr/include/c++/", "/usr/include/absl/", "../../../../src/libsanitizer/")


def reports(directory):
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), errors="replace") as f:
            text = f.read()
        for block in text.split("==================\n"):
            if "WARNING: ThreadSanitizer" in block:
                yield name, block


def access_makers(block):
    """For each access stack of the report, the file (or module) of the code that made it."""
    makers, in_access, decided = [], False, False
    for line in block.splitlines():
        if not line.startswith("    "):
            in_access, decided = bool(ACCESS.match(line)), False
            continue
        m = FRAME.match(line)
        if in_access and not decided and m:
            where = m.group(1) or m.group(2)
            if not where.startswith(ON_BEHALF_OF_CALLER):
                makers.append(where)
                decided = True
    return makers


def main(directory, source):
    own = tuple(os.path.join(source, d) + os.sep for d in ("server", "clients", "tests"))
    ours, elsewhere = [], collections.Counter()
    for name, block in reports(directory):
        frames = access_makers(block)
        if any(f.startswith(own) for f in frames):
            ours.append((name, block))
        else:
            kind = re.search(r"WARNING: ThreadSanitizer: ([^(\n]+)", block).group(1).strip()
            where = frames[0] if frames else "?"
            elsewhere[(kind, re.sub(r"\.so[.0-9]*$", ".so", os.path.basename(where)))] += 1
    for (kind, where), count in elsewhere.most_common():
        print(f"tsan: {count:4d} x {kind} with every access in library code ({where} ...): not the project's")
    for name, block in ours:
        print(f"tsan: REPORT in the project's code ({name}):\n{block}")
    print(f"tsan: {len(ours)} reports in the project's code, {sum(elsewhere.values())} in library code")
    return 1 if ours else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], os.path.abspath(sys.argv[2])))
