"""The model zoo: registry (names → entrypoints and pretrained entries), the one source
resolver and factory (``create_model``), checkpoint folders, the Hub, zoo cards, the
converter of original checkpoints and the zoo index.

Import the submodules directly (``from transreg.zoo.factory import create_model``); this
package imports none of them, so that the model families can register themselves in
:mod:`transreg.zoo.registry` without importing the rest of the zoo.
"""
