"""The held-out split: by picture, seeded, independent of record order, refused when too small."""
import pytest

from selfilter.data.split import SplitError, heldout_images, split_heldout


def _records(n_images: int, per_image: int = 3, text_only: int = 5):
    out = [{"id": f"{i}-{j}", "image": f"img{i}.png", "conversations": []}
           for i in range(n_images) for j in range(per_image)]
    return out + [{"id": f"t{k}", "conversations": []} for k in range(text_only)]


def test_whole_pictures_leave_the_pool_and_text_only_stays():
    recs = _records(100)
    held = heldout_images(recs, 0.1, 500, 8, seed=0)
    assert len(held) == 10
    pool, heldout = split_heldout(recs, held)
    assert len(heldout) == 30 and len(pool) == len(recs) - 30
    assert not {r["image"] for r in heldout} & {r.get("image") for r in pool}  # no picture on both sides
    assert all("image" in r for r in heldout)
    assert sum("image" not in r for r in pool) == 5
    # input order kept on both sides
    assert [r["id"] for r in pool] == [r["id"] for r in recs if r.get("image") not in held]


def test_seeded_and_independent_of_order():
    recs = _records(60)
    a = heldout_images(recs, 0.2, 500, 1, seed=3)
    assert a == heldout_images(list(reversed(recs)), 0.2, 500, 1, seed=3)
    assert a != heldout_images(recs, 0.2, 500, 1, seed=4)


def test_cap_and_refusal():
    assert len(heldout_images(_records(1000, 1), 0.5, 40, 8, seed=0)) == 40
    with pytest.raises(SplitError, match="min_images=8"):
        heldout_images(_records(20), 0.1, 500, 8, seed=0)
