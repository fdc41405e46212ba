"""The shapes generator: determinism, held-out scenes, imperfection rates, balance, CLI."""
from __future__ import annotations

import io
import json
import random
from collections import Counter

import pytest
from PIL import Image

from selfilter.cli import main as cli_main
from selfilter.data import shapes as S
from selfilter.data.ingest import ingest_records

SMALL = {"bench": {"vqa": 40, "pope_per_split": 20, "count": 12, "desc": 6, "binding": 16}}


@pytest.fixture(scope="module")
def files():
    return S.build_files(seed=3, pool_size=400, **SMALL)


def jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines()]


def test_same_seed_same_bytes_different_seed_differs(files):
    again = S.build_files(seed=3, pool_size=400, **SMALL)
    assert again.keys() == files.keys()
    assert [k for k in files if files[k] != again[k]] == []
    other = S.build_files(seed=4, pool_size=400, **SMALL)
    assert other["train.json"] != files["train.json"]
    assert other["images/000000.png"] != files["images/000000.png"]


def test_written_tree_is_byte_identical(tmp_path):
    cfg = _cfg(pool_size=60)
    S.write_dataset(tmp_path / "a", cfg, progress=False)
    S.write_dataset(tmp_path / "b", cfg, progress=False)
    S.write_dataset(tmp_path / "b", cfg, progress=False)  # rewriting replaces, leaves nothing stale
    fa = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    fb = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert fa == fb
    assert all((tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() for p in fa)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left


def test_train_json_is_llava_format_and_ingests_clean(files, tmp_path):
    records = json.loads(files["train.json"])
    assert len(records) == 400
    assert len({r["id"] for r in records}) == 400
    for r in records:
        assert set(r) == {"id", "image", "conversations", "category"}
        assert r["image"] in files and r["image"].startswith("images/")
        conv = r["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        assert conv[0]["value"].startswith("<image>\n")
        assert sum(t["value"].count("<image>") for t in conv) == 1
    for rel, data in files.items():
        if rel.endswith(".png"):
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_bytes(data)
    res = ingest_records(records, tmp_path, progress=False)
    assert res.rejected == [] and len(res.kept) == 400


def test_images_are_small_rgb_pngs(files):
    im = Image.open(io.BytesIO(files["images/000000.png"]))
    assert (im.format, im.mode, im.size) == ("PNG", "RGB", (32, 32))


def test_benchmark_scenes_disjoint_from_training_and_captions(files):
    train_keys = {S.layout_key(s["objects"]) for s in jsonl(files["scenes.jsonl"])}
    bench_rows = [r for n in S.BENCH_FILES for r in jsonl(files[f"bench/{n}.jsonl"])]
    assert all(f"bench/{r['image']}" in files for r in bench_rows)
    bench_images = {r["image"] for r in bench_rows}
    assert len(bench_images) == len(bench_rows)  # one scene per question
    b = S.generate_bench(3, **SMALL["bench"])
    bench_keys = {S.layout_key(objs) for objs in b.scenes}
    assert train_keys.isdisjoint(bench_keys)
    assert all(S.is_held_out(objs) for objs in b.scenes)
    rng = random.Random(0)
    caption_keys = {S.layout_key(S.sample_split_scene(rng, 32, rng.randint(1, 6), held_out=False))
                    for _ in range(300)}
    assert caption_keys.isdisjoint(bench_keys)


def test_caption_pairs(files):
    pairs = S.caption_pairs(seed=3, n=20)
    assert len(pairs) == 20
    im, text = pairs[0]
    assert im.size == (32, 32) and im.mode == "RGB" and text.startswith("There ")
    assert [t for _, t in S.caption_pairs(seed=3, n=20)] == [t for _, t in pairs]


def test_imperfection_rates_and_labels(files):
    imp = jsonl(files["imperfections.jsonl"])
    records = json.loads(files["train.json"])
    assert [r["id"] for r in imp] == [r["id"] for r in records]  # every sample, clean included
    kinds = Counter(r["kind"] for r in imp)
    assert kinds == {"clean": 200, "wrong_answer": 100, "near_duplicate": 40, "low_information": 40, "truncated": 20}
    by_id = {r["id"]: r for r in records}
    for row in imp:
        if row["kind"] == "near_duplicate":
            src = row["duplicate_of"]
            assert next(x["kind"] for x in imp if x["id"] == src) == "clean"
            a, b = by_id[row["id"]], by_id[src]
            assert [t["value"] for t in a["conversations"][1::2]] == [t["value"] for t in b["conversations"][1::2]]
            assert a["image"] != b["image"]


def test_rates_scale_with_params():
    pool = S.generate_pool(1, 200, rates={"wrong_answer": 0.5, "near_duplicate": 0.0,
                                          "low_information": 0.0, "truncated": 0.1})
    assert Counter(s.kind for s in pool) == {"wrong_answer": 100, "truncated": 20, "clean": 80}
    with pytest.raises(ValueError, match="unknown imperfection kinds"):
        S.generate_pool(1, 10, rates={"typo": 0.1})


def _answers_right(sample: S.Sample) -> float:
    """Fraction of a sample's answers that match a re-derivation from its true scene."""
    ok = 0
    for q, a in sample.qas:
        ok += a == _truth(q, sample.objects)
    return ok / len(sample.qas)


def _truth(question: str, objects) -> str | None:
    q = question.split("\n")[0]
    if q == "How many objects are there?":
        return str(len(objects))
    if q.startswith(("Describe", "Give", "What is in")):
        return S.describe_scene(objects)
    if q.startswith("Is there a "):
        words = q[len("Is there a "):].split()
        if words[0] in S.SHAPES:  # category presence: a shape
            hit = any(o["shape"] == words[0] for o in objects)
        elif words[1] == "object":  # category presence: a colour
            hit = any(o["color"] == words[0] for o in objects)
        else:
            hit = any(o["color"] == words[0] and o["shape"] == words[1] for o in objects)
        return "yes" if hit else "no"
    if q.startswith("How many ") and q.endswith(" are there?"):
        what = q[len("How many "):-len(" are there?")]
        if what.endswith("s") and what[:-1] in S.SHAPES:
            return str(sum(o["shape"] == what[:-1] for o in objects))
        if what.split()[0] in S.COLORS:
            return str(sum(o["color"] == what.split()[0] for o in objects))
    if q.startswith("Are there more ") and q.endswith("?"):
        a, b = q[len("Are there more "):-1].split(" than ")
        def count(phrase):
            word = phrase.split()[0]
            if word in S.COLORS:
                return sum(o["color"] == word for o in objects)
            return sum(o["shape"] == word[:-1] for o in objects)
        return "yes" if count(a) > count(b) else "no"
    return None


def test_wrong_answers_contradict_the_image_systematically():
    pool = S.generate_pool(5, 600)
    checked = Counter()
    for s in pool:
        for q, a in s.qas:
            truth = _truth(q, s.objects)
            if truth is not None:
                checked[(s.kind, a == truth)] += 1
    # clean and near-duplicate answers always agree with the image ...
    assert checked[("clean", False)] == 0 and checked[("near_duplicate", False)] == 0
    assert checked[("clean", True)] > 50
    # ... wrong answers never do
    assert checked[("wrong_answer", True)] == 0 and checked[("wrong_answer", False)] > 20
    # low-information and truncated answers never carry the right answer in the right form
    assert checked[("low_information", True)] == 0


def test_corrupt_scene_is_a_consistent_mapping():
    rng = random.Random(0)
    objs = S.sample_scene(rng, 32, 3)
    bad = S.corrupt_scene(objs, rng, 32)
    assert len(bad) == 4
    for o, b in zip(objs, bad):
        assert b["color"] == S.COLOR_SWAP[o["color"]] and b["shape"] == S.SHAPE_SWAP[o["shape"]]
        assert b["size"] != o["size"]
    assert len({(o["color"], o["shape"]) for o in bad}) == 4  # still unambiguous references


@pytest.mark.parametrize("qtype, question, answer, wrong", [
    ("color", "What color is the square?", "red", "green"),
    ("shape", "What shape is the red object?", "triangle", "circle"),
    ("size", "Is the red circle small or large?", "small", "large"),
    ("position", "Is the red circle on the left, in the middle or on the right?", "middle", "right"),
    ("position", "Is the red circle at the top, in the middle or at the bottom?", "bottom", "top"),
    ("count", "How many objects are there?", "6", "7"),
    ("relation", "Is the red circle above the blue square?", "yes", "no"),
    ("compare", "Are there more circles than squares?", "no", "yes"),
    ("exist_shape", "Is there a circle in the image?", "yes", "no"),
    ("exist_color", "Is there a red object in the image?", "no", "yes"),
    ("count_shape", "How many circles are there?", "0", "1"),
    ("count_color", "How many red objects are there?", "2", "3"),
    ("count_total", "How many objects are there?", "6", "7"),
])
def test_wrong_answer_rules(qtype, question, answer, wrong):
    assert S.wrong_answer(qtype, question, answer) == wrong


def test_truncated_and_low_information_answers():
    assert S.truncate_answer("There are 2 objects: a red square.") == "There are 2 objec"  # mid-word, as generation stops
    assert S.truncate_answer("red") == "r" and S.truncate_answer("no") == "n"
    assert S.truncate_answer("3") == "3"  # at least the first character: never an empty answer


def test_truncated_samples_never_have_an_empty_answer():
    pool = S.generate_pool(3, 400, rates={"wrong_answer": 0.0, "near_duplicate": 0.0,
                                          "low_information": 0.0, "truncated": 0.5})
    truncated = [a for s in pool if s.kind == "truncated" for _, a in s.qas]
    assert len(truncated) > 200 and any(len(a) == 1 for a in truncated)
    assert all(a.strip() for s in pool for _, a in s.qas)


def test_bench_answers_balanced_and_well_formed(files):
    vqa = jsonl(files["bench/vqa.jsonl"])
    binding = jsonl(files["bench/binding.jsonl"])
    for rows, types, per_type in ((vqa, S.VQA_TYPES, 20), (binding, S.BINDING_TYPES, 2)):
        assert Counter(r["qtype"] for r in rows) == {t: per_type for t in types}
        for t in types:  # answers cycle through the type's values: no answer is favoured
            got = Counter(r["answer"] for r in rows if r["qtype"] == t)
            values = S.BENCH_ANSWERS[t]
            assert set(got) <= set(values) and max(got.values()) == -(-per_type // len(values)), (t, got)
    for r in vqa + binding + jsonl(files["bench/pope.jsonl"]) + jsonl(files["bench/count.jsonl"]):
        assert r["question"].endswith("\nAnswer with a single word.")
        assert " " not in r["answer"]
    pope = jsonl(files["bench/pope.jsonl"])
    # yes / no, and shape / colour categories within each answer, in equal shares per split
    assert Counter((r["split"], r["answer"], S.category_kind(r["category"])) for r in pope) == {
        (s, a, k): 5 for s in ("random", "popular", "adversarial") for a in ("yes", "no") for k in S.CATEGORY_KINDS}
    count = jsonl(files["bench/count.jsonl"])
    assert Counter(r["answer"] for r in count) == {str(n): 2 for n in range(1, 7)}
    desc = jsonl(files["bench/desc.jsonl"])
    assert all(r["objects"] and {"shape", "color", "size", "x", "y"} <= set(r["objects"][0]) for r in desc)


def test_pope_asks_category_presence_with_pope_negative_sampling():
    pool_scenes = [s.objects for s in S.generate_pool(4, 300)]
    stats = S.category_stats(pool_scenes)
    b = S.generate_bench(2, vqa=0, pope_per_split=40, count=0, desc=0, stats=stats)
    scene_of = {S.bench_image(i): objs for i, objs in enumerate(b.scenes)}
    for row in b.pope:
        objs, cat = scene_of[row["image"]], row["category"]
        assert row["question"].startswith(S.category_question(cat))
        assert (cat in S.categories_of(objs)) == (row["answer"] == "yes")
        if row["answer"] == "no":
            kind = S.category_kind(cat)
            absent = [c for c in (S.SHAPES if kind == "shape" else S.COLORS) if c not in S.categories_of(objs)]
            if row["split"] == "popular":  # the absent category of that kind in most pool scenes
                assert stats.scenes_with[cat] == max(stats.scenes_with[c] for c in absent)
            elif row["split"] == "adversarial":  # ... co-occurring most with what is present
                def co(c):
                    return sum(stats.together.get((p, c), 0) for p in S.categories_of(objs))
                assert co(cat) == max(co(c) for c in absent)


def test_category_stats_and_negative_category():
    objs = [{"shape": "circle", "color": "red"}, {"shape": "square", "color": "blue"}]
    stats = S.category_stats([objs, [{"shape": "triangle", "color": "red"}]])
    assert stats.scenes_with == {"circle": 1, "square": 1, "red": 2, "blue": 1, "triangle": 1}
    assert stats.together[("red", "triangle")] == 1 and stats.together[("circle", "square")] == 1
    rng = random.Random(0)
    assert S.negative_category(objs, rng, "popular", "shape", stats) == "triangle"
    assert S.negative_category(objs, rng, "adversarial", "color", stats) == "green"  # all tie: by name
    assert S.negative_category(objs, rng, "random", "color") in {"green", "yellow", "white"}
    three = objs + [{"shape": "triangle", "color": "green"}]
    assert S.negative_category(three, rng, "random", "shape") is None
    with pytest.raises(ValueError, match="random, popular, adversarial"):
        S.negative_category(objs, rng, "hard", "shape", stats)


def test_default_benchmark_has_at_least_50_questions_per_reported_type():
    """The calibration's per-type check needs >= 50 questions a type (one question then moves a
    score by 2 points at most); the default params must provide them."""
    from pathlib import Path

    from selfilter.config import load_section
    from selfilter.data.config import DataConfig

    bench = load_section("data", DataConfig, Path(__file__).parents[2] / "params.yaml").shapes.bench
    assert bench.vqa // len(S.VQA_TYPES) >= 50
    assert bench.pope_per_split >= 50
    assert bench.count >= 50 and bench.count % 6 == 0  # counts 1..6 in equal shares


def test_short_answer_types_are_balanced_in_training():
    """No question type may be solvable by its most common answer (the calibration check)."""
    rng = random.Random(0)
    answers: dict[str, Counter] = {t: Counter() for t in S.QUESTION_TYPES}
    for _ in range(3000):
        objs = S.sample_scene(rng, 32, rng.randint(1, 6))
        for t, gen in S.QUESTION_TYPES.items():
            qa = gen(objs, rng)
            if qa:
                answers[t][qa[1]] += 1
    for t, c in answers.items():
        majority = c.most_common(1)[0][1] / sum(c.values())
        assert majority < 0.6, (t, c.most_common(3))
    for t in ("exist", "exist_shape", "exist_color"):
        assert set(answers[t]) == {"yes", "no"}
        assert 0.45 < answers[t]["yes"] / sum(answers[t].values()) < 0.55, (t, answers[t])


def test_references_are_unambiguous():
    rng = random.Random(1)
    for _ in range(500):
        objs = S.sample_scene(rng, 32, rng.randint(1, 9))
        for o in objs:
            for omit in ("color", "shape", "size"):
                text = S.refer(o, objs, omit)
                assert omit == "size" or o[omit] not in text.split()


def test_describe_scene():
    objs = [{"shape": "circle", "color": "red", "size": "large", "row": "top", "col": "left"},
            {"shape": "square", "color": "blue", "size": "small", "row": "middle", "col": "middle"}]
    assert S.describe_scene(objs[::-1]) == (
        "There are 2 objects: a large red circle at the top left and a small blue square in the center.")
    assert S.describe_scene(objs[:1]) == "There is 1 object: a large red circle at the top left."


def _cfg(**shapes):
    from selfilter.data.config import ShapesConfig

    return ShapesConfig(**{"bench": {"vqa": 8, "pope_per_split": 4, "count": 6, "desc": 2}, **shapes})


def test_cli_and_prepare_stage(tmp_path, capsys):
    import yaml

    from stages.generate import main as generate_main
    from stages.prepare import main as prepare_main

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"image_dir": str(tmp_path / "shapes"), "shapes": {
        "pool_size": 50, "bench": {"vqa": 8, "pope_per_split": 4, "count": 6, "desc": 2}}}}))
    assert cli_main(["shapes", "--out", str(tmp_path / "s2"), "--params", str(params), "--no-progress"]) == 0
    assert generate_main(["--params", str(params), "--out", str(tmp_path / "shapes"), "--no-progress"]) == 0
    assert prepare_main(["--params", str(params), "--generated", str(tmp_path / "shapes"),
                         "--out", str(tmp_path / "pool"), "--no-progress"]) == 0
    assert (tmp_path / "shapes" / "train.json").read_bytes() == (tmp_path / "s2" / "train.json").read_bytes()
    summary = json.loads((tmp_path / "pool" / "summary.json").read_text())
    assert summary["kept"] == 50 and summary["rejected"] == 0
    # a typo in params: exit 2, one message naming the key, no traceback
    params.write_text(yaml.safe_dump({"data": {"shapes": {"pool_sise": 5}}}))
    capsys.readouterr()
    assert cli_main(["shapes", "--out", str(tmp_path / "s3"), "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "data.shapes.pool_sise" in err and "Traceback" not in err


def test_prepare_llava_source_and_image_dir_mismatch(tmp_path, capsys):
    import yaml

    from stages.generate import main as generate_main
    from stages.prepare import main as prepare_main

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.new("RGB", (8, 8)).save(imgs / "a.png")
    ann = tmp_path / "ann.json"
    conv = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
    ann.write_text(json.dumps([{"id": "1", "image": "a.png", "conversations": conv},
                               {"id": "2", "image": "b.png", "conversations": conv}]))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"source": "llava", "annotations": str(ann), "image_dir": str(imgs),
                                               "benchmark": "none"}}))
    assert generate_main(["--params", str(params), "--out", str(tmp_path / "shapes"), "--no-progress"]) == 0
    args = ["--params", str(params), "--generated", str(tmp_path / "shapes"), "--out", str(tmp_path / "pool"),
            "--no-progress"]
    assert prepare_main(args) == 0
    assert json.loads((tmp_path / "pool" / "summary.json").read_text())["by_reason"] == {"image_missing": 1}
    # the declared output exists, and says why nothing was generated
    assert json.loads((tmp_path / "shapes" / "not_generated.json").read_text())["generated"] is False
    params.write_text(yaml.safe_dump({"data": {"image_dir": "elsewhere", "shapes": {"pool_size": 5}}}))
    capsys.readouterr()
    assert prepare_main(args) == 2
    assert "data.image_dir" in capsys.readouterr().err


# --------------------------------------------------------------------------- difficulty skew


def test_default_generator_reproduces_the_locked_pool_bytes():
    """The regime knobs' defaults leave the embedded pool byte for byte what dvc.lock recorded
    (checked against the lock, not against this code's own output)."""
    import hashlib
    from pathlib import Path

    import yaml

    from selfilter.data.config import DataConfig

    root = Path(__file__).resolve().parents[2]
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    locked = [d for stage in lock["stages"].values() for d in stage.get("deps", [])
              if d["path"] == "data/shapes/train.json"]
    assert locked, "dvc.lock has no data/shapes/train.json dependency"
    cfg = DataConfig(**yaml.safe_load((root / "params.yaml").read_text())["data"]).shapes
    assert cfg.difficulty_skew == 0
    files = S.build_files(cfg.seed, cfg.pool_size, cfg.image_size, cfg.max_objects,
                          categories=cfg.categories.model_dump(), rates=cfg.imperfections.model_dump(),
                          bench=cfg.bench.model_dump(), difficulty_skew=cfg.difficulty_skew)
    assert hashlib.md5(files["train.json"]).hexdigest() == locked[0]["md5"]


def test_skew_thins_crowded_training_scenes_and_leaves_the_benchmark_uniform():
    n = 3000
    skewed = Counter(len(s.objects) for s in S.generate_pool(7, n, difficulty_skew=0.8,
                                                             rates={"wrong_answer": 0.0, "near_duplicate": 0.0,
                                                                    "low_information": 0.0, "truncated": 0.0}))
    uniform = Counter(len(s.objects) for s in S.generate_pool(7, n, rates={
        "wrong_answer": 0.0, "near_duplicate": 0.0, "low_information": 0.0, "truncated": 0.0}))
    # independent of object_count_weights: exp(-0.8 k), normalised, written out
    z = sum(2.718281828459045 ** (-0.8 * k) for k in range(6))
    for k in range(1, 7):
        expected = n * 2.718281828459045 ** (-0.8 * (k - 1)) / z
        assert abs(skewed[k] - expected) < 4 * expected ** 0.5 + 3, (k, skewed[k], expected)
        assert abs(uniform[k] - n / 6) < 4 * (n / 6) ** 0.5, (k, uniform[k])
    assert skewed[5] + skewed[6] < 0.07 * n < uniform[5] + uniform[6]
    # the benchmark is generated from its own stream: the same questions whatever the skew
    a = S.build_files(seed=3, pool_size=300, **SMALL)
    b = S.build_files(seed=3, pool_size=300, difficulty_skew=1.0, **SMALL)
    assert a["train.json"] != b["train.json"]
    for name in ("vqa", "count", "desc", "binding"):
        assert a[f"bench/{name}.jsonl"] == b[f"bench/{name}.jsonl"], name


def test_negative_skew_is_refused():
    with pytest.raises(ValueError, match="difficulty_skew"):
        S.generate_pool(1, 10, difficulty_skew=-1)
