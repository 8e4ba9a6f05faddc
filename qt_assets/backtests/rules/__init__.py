"""Rule strategies, one module per rule, each registered with ``@rule`` (qt_resources.plugins): every module
here is loaded on the first lookup of a rule. To add a rule, add one file here (or anywhere listed in
qtos.yaml's ``plugins:``): see docs/extending.md."""
