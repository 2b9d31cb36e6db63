"""One schema module per config group (see attnexp.validation)."""
