"""Command-line interface: `advface <group> <command>`; one module per group."""
