"""Command-line entry points. Each sub-command lives in its own module with a ``main(argv)`` function."""
