"""LLM-judge ratings (Alpagasus-style, 0-10) of instruction records.

``prompt`` builds the rating prompt, ``parse`` reads the score, ``cache`` stores replies,
``openai_backend`` talks to any OpenAI-compatible endpoint, ``annotation`` rates offline against
scene annotations, ``backends`` picks one by name and ``run`` turns replies into the table.
"""
from selfilter.judge.backends import BACKENDS, build_backend
from selfilter.judge.parse import fill_unparsed, parse_rating
from selfilter.judge.run import judge_records, ratings_table

__all__ = ["BACKENDS", "build_backend", "fill_unparsed", "judge_records", "parse_rating", "ratings_table"]
