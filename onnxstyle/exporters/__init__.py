"""ONNX graphs of the style loss and its exact gradient, in plain operators every execution provider runs.

- ``graph``: the network and its adjoint written out node by node (ReLU masks, routed max-pool, Winograd).
- ``models``: the graphs the engines and exports use, with their input and output names.
- ``reference`` and ``validation``: the torch reference with the graph's own kink decisions, and the parity check.
- ``export``: ``export_backbone``, which writes the validated graphs and their metadata together.
"""
