"""Resources: data providers, warehouse, model registry, broker; each an interface with an offline/local
default and a real implementation. Shared domain logic (config, calendar, costs) lives here too."""
