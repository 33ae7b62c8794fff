"""ActTail: heavy-tail (HT-SR) guided activation sparsity for large language models.

Data flows one way: model ID -> weights -> alphas -> allocation -> sparse model -> metrics.
This package is the science core and imports nothing from the service side (api/, workers/).
"""

__version__ = "0.1.0"
