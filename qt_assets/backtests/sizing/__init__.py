"""Sizing kinds, one module per kind, each registered with ``@sizing_kind`` (qt_resources.plugins): a kind
turns a strategy's directions into weights by a multiplier per session and symbol. Every module here is loaded
on the first lookup. To add a kind, add one file here (or anywhere listed in qtos.yaml's ``plugins:``): see
docs/extending.md."""
