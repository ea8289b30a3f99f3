import pytest

from potluck.store.updates import UpdateStore

UID = "cd" * 32


def test_put_get_ids(tmp_path):
    store = UpdateStore(tmp_path / "updates")
    assert not store.has(UID) and list(store.ids()) == []
    store.put(UID, b"bytes")
    store.put(UID, b"other")  # content-addressed: the first write stays
    assert store.get(UID) == b"bytes" and list(store.ids()) == [UID]
    assert not [p for p in store.root.iterdir() if p.name.endswith(".tmp")]
    store.delete(UID)
    assert not store.has(UID)


@pytest.mark.parametrize("bad", ["../etc/passwd", "AB" * 32, "ab" * 31, ""])
def test_ids_are_checked_before_touching_the_disk(tmp_path, bad):
    with pytest.raises(ValueError):
        UpdateStore(tmp_path).path(bad)
