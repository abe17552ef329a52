"""The sdapi servers: the HTTP client, each server's keys and files, the checks before and
after each request (docs/servers.md). Knows nothing of folders."""
