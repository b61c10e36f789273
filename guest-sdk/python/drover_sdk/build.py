"""Builds a drover agent (or toolbox) written in Python into a WASI 0.2 component.

    drover-build-py <app.py> [-o <name>.wasm] [--world agent|toolbox] [--wit <dir>]

componentize-py embeds CPython, the app module, this SDK and what they import, and snapshots
them after import, so a run starts with everything loaded. The component is written beside its
final name and renamed into place, so a host watching the agents directory never loads half a
file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SDK = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="drover-build-py", description=__doc__.splitlines()[0])
    parser.add_argument("app", help="the agent's module, e.g. agents/echo-py/app.py")
    parser.add_argument("-o", "--out", help="the component to write (default: <app>.wasm)")
    parser.add_argument("--world", choices=["agent", "toolbox"], default="agent")
    parser.add_argument("--wit", help="the WIT package (default: the repository's wit/)")
    args = parser.parse_args(argv)

    app = Path(args.app).resolve()
    if app.suffix != ".py" or not app.is_file():
        parser.error(f"{args.app} is not a Python file")
    out = Path(args.out or app.with_suffix(".wasm").name).resolve()
    wit = Path(args.wit).resolve() if args.wit else SDK.parent.parent / "wit"
    try:
        from componentize_py import script
    except ImportError:
        print(
            "drover-build-py: componentize-py is not installed: "
            f"pip install --require-hashes -r {SDK / 'requirements.txt'}",
            file=sys.stderr,
        )
        return 1

    partial = out.with_name(f".{out.name}.tmp")
    sys.argv = [
        "componentize-py",
        "--wit-path",
        str(wit),
        "--world",
        args.world,
        "componentize",
        app.stem,
        "--python-path",
        str(app.parent),
        "--python-path",
        str(SDK),
        "--output",
        str(partial),
    ]
    try:
        script()
    except SystemExit as e:
        if e.code:
            partial.unlink(missing_ok=True)
            return int(e.code) if isinstance(e.code, int) else 1
    except Exception as e:  # componentize-py reports build errors as exceptions
        partial.unlink(missing_ok=True)
        print(f"drover-build-py: componentize-py could not build {app}: {e}", file=sys.stderr)
        return 1
    if not partial.exists():
        print(f"drover-build-py: componentize-py wrote no component for {app}", file=sys.stderr)
        return 1
    os.replace(partial, out)
    print(f"built {out} ({out.stat().st_size / (1 << 20):.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
