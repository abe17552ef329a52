"""The shared root and its protocol: paths, names, claims, locks, atomic files, the file
server's clock, discovery (docs/protocol.md)."""
