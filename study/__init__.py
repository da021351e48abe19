"""The study service, in rooms: ``cli``, ``spec``, ``grid``, ``launch``, ``results``.

Imports run one way (docs/architecture.md): ``cli`` -> the others, ``results`` -> ``grid`` ->
``spec`` -> ``trainer``, ``grid`` -> ``storage``. Importing this package loads none of them,
so ``lrstudy --help`` pays for no Optuna or Keras; use the rooms' own public names.
"""
