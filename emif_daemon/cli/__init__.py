"""`emif`: the command line. One module per group of commands; `main.py` maps commands to
exit codes (docs/architecture.md#the-command-line)."""
