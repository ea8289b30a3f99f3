"""potluck.store.modules: kept records on disk, a damaged one skipped when asked, the further check,
name claims beside the records."""

import pytest

from potluck.identity import NodeIdentity
from potluck.modules.record import ModuleRefused, module_id, sign_module
from potluck.store.modules import ModuleStore
from tests.modules.test_record import SHAPES, make


def test_damaged_files_raise_or_are_skipped_and_a_further_check_refuses(tmp_path):
    me = NodeIdentity.generate()
    store = ModuleStore(tmp_path / "modules")
    good = sign_module(me, make(me, name="bard"))
    assert store.admit(good, "run", SHAPES, 4, 2)[0] == "kept"
    (store.root / "zz.module").write_bytes(good[:-1])  # truncated
    with pytest.raises(ModuleRefused, match=r"zz\.module"):
        store.library()
    damaged: list[ModuleRefused] = []
    lib = store.library(on_damaged=damaged.append)
    assert lib.names() == ["bard"] and lib.get("bard").module_id == module_id(good)
    assert len(damaged) == 1 and "zz.module" in str(damaged[0])

    def taken(m):
        raise ModuleRefused("name_taken", f"{m.name} is someone else's")

    other = sign_module(me, make(me, name="poet"))
    with pytest.raises(ModuleRefused) as info:
        store.admit(other, "run", SHAPES, 4, 2, check=taken)
    assert info.value.reason == "name_taken" and not (store.root / "poet.module").exists()


def test_claims_are_kept_beside_the_records(tmp_path):
    store = ModuleStore(tmp_path / "modules")
    assert store.claim("bard") is None
    store.put_claim("bard", b"signed claim")
    assert store.claim("bard") == b"signed claim"
    assert store.library().names() == []  # a claim is not a module
