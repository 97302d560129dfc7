"""Regenerate the Python modules of ``ranker.proto`` (needs the ``dev`` extra's grpcio-tools).

Owns: the generated ``ranker_pb2*`` files. Must not touch: anything else.

    python -m serving.proto.generate [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["PROTO", "generate"]

ROOT = Path(__file__).resolve().parents[2]
PROTO = Path(__file__).resolve().with_name("ranker.proto")


def generate(out_dir: Path = ROOT) -> list[Path]:
    """Write ``serving/proto/ranker_pb2{,_grpc}.py`` and ``ranker_pb2.pyi`` under ``out_dir``.

    Raises:
        RuntimeError: protoc failed (its errors are on stderr).
    """
    from grpc_tools import protoc

    rel = PROTO.relative_to(ROOT)
    (out_dir / rel.parent).mkdir(parents=True, exist_ok=True)
    code = protoc.main(["grpc_tools.protoc", f"-I{ROOT}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
                        f"--grpc_python_out={out_dir}", str(PROTO)])
    if code != 0:
        raise RuntimeError(f"protoc failed on {PROTO} with exit code {code}")
    return [out_dir / rel.parent / f"ranker_pb2{suffix}" for suffix in (".py", ".pyi", "_grpc.py")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT)
    for path in generate(parser.parse_args().out):
        print(path)


if __name__ == "__main__":
    main()
