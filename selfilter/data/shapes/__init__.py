"""The embedded "shapes" dataset: a miniature machine-generated visual instruction set.

Everything is a pure function of a seed (``random.Random`` streams named ``"<seed>:train"``,
``"<seed>:bench"``, ``"<seed>:caption"``), drawn with PIL without antialiasing and saved as PNG
with fixed settings, so the same seed gives the same bytes in every file.

Modules (each imports only those above it; every public name is re-exported here):
- ``scene``: vocabulary, drawing / rendering scenes, the held-out layouts, describing a scene;
- ``questions``: question generators and the question types the pool and benchmarks ask;
- ``pool``: the training pool and its imperfections, and the caption pairs;
- ``bench``: the held-out benchmarks;
- ``files``: every output file as bytes, writing them, the ``selfilter shapes`` command.

Scenes. A ``size x size`` image (32 px by default) on a 3x3 grid; 1-``max_objects`` objects, one
per cell, each with a colour (5, far apart in RGB), a shape (circle, square, triangle) and a size
(small, large); a colour+shape pair appears at most once per scene, so "the red circle" always
names one object. Objects sit at their cell centre with +-1 px jitter: position words (left /
middle / right, top / middle / bottom) are never ambiguous, and the image is still unique.

Samples (LLaVA-Instruct's three categories, ``category`` key on each record):
- ``conversation``: 2-4 short-answer turns of whole-image questions: how many objects, how many
  of a shape / colour, is there a shape / a colour (:data:`CONVERSATION_TYPES`);
- ``detail``: "Describe the image in detail." -> :func:`describe_scene` (every object with
  size, colour, shape and place);
- ``reasoning``: 1-2 count comparisons ("Are there more circles than squares?").
The pool asks what a ~0.4M-parameter LLaVA can learn from a few hundred steps; questions that
bind an attribute to one object ("What color is the circle?", relations) are generated only for
the diagnostic benchmark and ``benchmarks.learnability`` (docs/TESTBED.md).
Short-answer questions end with ``"\nAnswer with a single word."`` (LLaVA-1.5's short-answer
convention; the benchmark questions carry the same suffix, so training and evaluation agree).
Answers come from a small vocabulary: colour / shape / size words, ``yes``/``no``, position words,
and counts as numerals (``"0"``-``"9"``, also in ``bench/count.jsonl``). Answers within every
question type are balanced by construction (yes/no 50:50, counts of 1-6 uniform, ...), so the
most-common-answer baseline is low and each type is learnable from the image.

Imperfections (rates in params; exclusive kinds; exact counts ``round(rate * pool_size)``).
They are designed to *hurt* a model trained on them, as real machine-generated errors do:
- ``wrong_answer``: every answer of the sample contradicts the image, systematically
  (:func:`wrong_answer`: colours and shapes moved by one fixed permutation, positions shifted,
  sizes and yes/no swapped, counts one too high; descriptions of :func:`corrupt_scene`, which
  also hallucinates an extra object). Systematic errors are not noise that averages out: they
  pull the model towards one consistent wrong image->answer mapping.
- ``low_information``: every answer replaced by a non-answer ("It is hard to tell.", "There
  are some shapes in the image."): it teaches the wrong output format.
- ``truncated``: every answer cut to its first half (descriptions mid-sentence, words to a
  prefix), as when generation stops early; at least the first character stays (one-character
  answers stay whole): an empty answer would leave nothing to learn or score.
- ``near_duplicate``: a copy of a clean sample, image re-rendered shifted by 1 px, same questions
  (the detail prompt possibly paraphrased): redundant rather than wrong.
``imperfections.jsonl`` lists *every* sample with its kind, ``"clean"`` included; near
duplicates also carry ``duplicate_of`` (the id of their source).

Held-out scenes. A scene's layout key (shape, colour, size, row, column of every object) is
hashed; 1 in :data:`HELD_OUT_MODULUS` keys is reserved for the benchmarks, and the training pool
and :func:`caption_pairs` never draw a reserved layout. So benchmark scenes are disjoint from
training and caption scenes by construction (not just different random draws), whatever the sizes.

Benchmarks (``bench/``, one held-out scene per question): ``count.jsonl`` (how many objects,
1..6 equally often), ``desc.jsonl`` (descriptions, scored CHAIR-style on categories),
``pope.jsonl`` (POPE on categories: "Is there a circle?", "Is there a red object?", yes / no and
shape / colour in equal shares, negatives sampled random / popular / adversarial from the pool's
category statistics, :func:`negative_category`), ``vqa.jsonl`` (how many of a shape / colour)
and ``binding.jsonl`` (one object's colour, shape, size, position, relations: diagnostic).

Outputs (:func:`write_dataset`, paths relative to the output folder): ``train.json``,
``images/NNNNNN.png``, ``scenes.jsonl``, ``imperfections.jsonl``, ``bench/{vqa,pope,count,desc,binding}.jsonl``
with ``image`` relative to ``bench/`` (``images/bNNNNN.png``).
"""

from selfilter.data.shapes.bench import (
    BENCH_FILES, Bench, CategoryStats, bench_image, category_stats, generate_bench, negative_category,
)
from selfilter.data.shapes.files import add_arguments, build_files, run, write_dataset, write_tree
from selfilter.data.shapes.pool import (
    COLOR_SWAP, KINDS, LOW_INFO_DETAIL, LOW_INFO_SHORT, SHAPE_SWAP, SIZE_SWAP, Sample, caption_pairs,
    corrupt_scene, generate_pool, low_information_answer, object_count_weights, pool_records, sample_id,
    sample_qas, shifted, truncate_answer, wrong_answer,
)
from selfilter.data.shapes.questions import (
    BENCH_ANSWERS, BENCH_DETAIL_PROMPT, BINDING_TYPES, CATEGORY_KINDS, CONVERSATION_TYPES, DETAIL_PROMPTS,
    IMAGE_TOKEN, QA, QUESTION_TYPES, REASONING_TYPES, SHORT_ANSWER, VQA_TYPES, absent_pairs, ask,
    balanced_question, categories_of, category_kind, category_question, existence_question, negative_pair,
    q_color, q_compare, q_count, q_count_color, q_count_shape, q_count_total, q_count_where, q_exist,
    q_exist_color, q_exist_shape, q_larger, q_position, q_relation, q_shape, q_size, short, to_conversations,
)
from selfilter.data.shapes.scene import (
    BACKGROUND, COLORS, COLS, GRID, HELD_OUT_MODULUS, RADIUS, ROWS, SHAPES, SIZES, Obj, describe_scene,
    is_held_out, layout_key, place_phrase, png_bytes, refer, render_scene, sample_scene, sample_split_scene,
)

__all__ = [
    "COLORS", "SHAPES", "SIZES", "ROWS", "COLS", "GRID", "BACKGROUND", "RADIUS", "HELD_OUT_MODULUS",
    "Obj", "layout_key", "is_held_out", "sample_scene", "sample_split_scene", "render_scene", "png_bytes",
    "place_phrase", "describe_scene", "refer",
    "SHORT_ANSWER", "IMAGE_TOKEN", "DETAIL_PROMPTS", "BENCH_DETAIL_PROMPT", "QA", "q_color", "q_shape",
    "q_size", "q_position", "q_count", "absent_pairs", "negative_pair", "existence_question", "q_exist",
    "q_relation", "q_count_where", "q_compare", "q_larger", "CATEGORY_KINDS", "category_kind",
    "categories_of", "category_question", "q_exist_shape", "q_exist_color", "q_count_shape",
    "q_count_color", "q_count_total", "QUESTION_TYPES", "CONVERSATION_TYPES", "REASONING_TYPES",
    "VQA_TYPES", "BINDING_TYPES", "BENCH_ANSWERS", "ask", "balanced_question", "short",
    "to_conversations",
    "LOW_INFO_SHORT", "LOW_INFO_DETAIL", "COLOR_SWAP", "SHAPE_SWAP", "SIZE_SWAP", "sample_qas", "KINDS",
    "wrong_answer", "corrupt_scene", "truncate_answer", "low_information_answer", "Sample",
    "object_count_weights", "generate_pool", "pool_records", "sample_id", "shifted", "caption_pairs",
    "CategoryStats", "category_stats", "negative_category", "Bench", "BENCH_FILES", "bench_image",
    "generate_bench",
    "build_files", "write_tree", "write_dataset", "add_arguments", "run",
]
