"""The selector map: the same grid run in several data regimes, and which selector wins where.

``spec`` reads a sweep file (sweeps/regimes.yaml), ``workspace`` makes one DVC workspace per
regime that shares the checkout's DVC cache, ``collect`` keeps each regime's results and what
the regime measurably was (imperfect share, crowded scenes, the judge's accuracy), ``map``
turns them into reports/regimes.json and .md, ``plot`` into the heat map. The Prefect flow that
runs it all is flows/regimes.py.
"""
