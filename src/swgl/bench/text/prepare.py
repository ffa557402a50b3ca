"""``python -m swgl.bench.text.prepare DIR``: write the prepared text corpus.

For a machine without the Debian packages (or network): run this where they are installed,
copy ``DIR`` there and pass ``--data-dir DIR``; the splits are the same.
"""

from __future__ import annotations

import argparse

from swgl.bench.text.corpora import export


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_root", help="the folder to write (DIR/swgl-text/<domain>.txt)")
    p.add_argument("--root", default=None, help="read the system corpora below (default: /)")
    args = p.parse_args(argv)
    for path in export(args.out_root, args.root):
        print(f"{path}: {path.stat().st_size} bytes")  # noqa: T201 (a script's output)


if __name__ == "__main__":
    main()
