"""Analysis: costs (params, MACs), tables, plots, attention maps."""
