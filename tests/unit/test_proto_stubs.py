"""The committed gRPC stubs are exactly what proto/generate.py makes from proto/ (CI drift check)."""

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_match_a_fresh_generation(tmp_path):
    out = tmp_path / "proto"
    done = subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    committed = ROOT / "services" / "common" / "proto"
    fresh = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    existing = sorted(p.relative_to(committed) for p in committed.rglob("*")
                      if p.is_file() and "__pycache__" not in p.parts)
    assert fresh == existing, "stub files differ: run `python proto/generate.py` and commit"
    for rel in fresh:
        assert filecmp.cmp(out / rel, committed / rel, shallow=False), f"{rel} is stale: run `python proto/generate.py`"


def test_grpc_runtime_is_not_older_than_the_generator():
    import grpc

    from services.common.proto.vsbench.v1 import embedding_pb2_grpc

    def parse(v):
        return tuple(int(x) for x in v.split(".")[:3])

    assert parse(grpc.__version__) >= parse(embedding_pb2_grpc.GRPC_GENERATED_VERSION)
