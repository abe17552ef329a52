"""What only a Mac has: the LaunchAgent and keeping the Mac awake (docs/macos.md)."""
