import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_match_the_protos(tmp_path):
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    generated = gen.generate(tmp_path)
    assert generated, "no stubs generated"
    committed_dir = ROOT / "daemon" / "potluck" / "v1"
    for path in generated:
        committed = committed_dir / path.name
        assert committed.exists(), f"{path.name} is missing: run `make proto`"
        assert committed.read_bytes() == path.read_bytes(), f"{path.name} is stale: run `make proto`"
    stale = {p.name for p in committed_dir.glob("*_pb2*.py*")} - {p.name for p in generated}
    assert not stale, f"stubs without a proto: {stale}"
