"""One module per target: its Exporter and its Runner."""
