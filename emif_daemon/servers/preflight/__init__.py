"""Before a stage's first request, and as `emif check`: can the server do what the recipes
say? One module per server (docs/servers.md#preflight)."""
