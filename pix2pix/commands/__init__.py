"""The ``pix2pix`` verbs, one module each: ``register(verbs)`` adds the verb's parser and
arguments and sets its handler, which sits beside it in the same module.

A handler takes the parsed arguments and the unparsed rest (only ``train`` accepts any: its
config overrides) and returns the exit status. Modules import only the standard library and
the light ``model`` lists at the top; each handler imports torch, the training code or the
service when it runs, so ``pix2pix --help`` stays fast and training never pays for web imports.
"""

from pix2pix.commands import (
    compare,
    data,
    evaluate,
    export,
    import_reference,
    segmenter,
    serve,
    train,
    translate,
)

# In the order ``pix2pix --help`` lists them.
COMMANDS = (train, translate, data, export, import_reference, serve, evaluate, compare, segmenter)
